//! The terminal animation of `ddexp sample`: the sequences redrawn in place as they unmask.
//!
//! Each frame is a status line and the sequences, wrapped to the terminal's width, with the
//! mask shown as [`MASK_GLYPH`](crate::data::MASK_GLYPH), spaces of character vocabularies as `·` (text8 is mostly
//! spaces and letters, and a blank would be invisible next to a mask) and line breaks as `⏎`,
//! so a frame's height never depends on the text. The next frame moves the cursor back up
//! over the last one. A frame is cut to the terminal's height, since the cursor cannot move
//! above the top of the screen.

use std::time::{Duration, Instant};

use console::Term;

use super::ancestral::Step;
use crate::data::Vocab;

/// At most this many frames a second: a fast device can step faster than a terminal redraws.
const FRAME_INTERVAL: Duration = Duration::from_millis(30);

pub struct Animation<'a> {
    term: Term,
    vocab: &'a Vocab,
    seq_len: usize,
    steps: usize,
    /// Lines of the frame on screen.
    drawn: usize,
    last_frame: Option<Instant>,
}

impl<'a> Animation<'a> {
    /// An animation on stdout, or None when stdout is not a terminal.
    pub fn on_stdout(vocab: &'a Vocab, seq_len: usize, steps: usize) -> Option<Animation<'a>> {
        let term = Term::stdout();
        term.is_term().then_some(Animation {
            term,
            vocab,
            seq_len,
            steps,
            drawn: 0,
            last_frame: None,
        })
    }

    /// Shows the state after `step` if it changed and the last frame is old enough (the last
    /// step is always shown).
    pub fn show(&mut self, step: &Step) {
        let last = step.index + 1 == self.steps;
        let due = self
            .last_frame
            .is_none_or(|at| at.elapsed() >= FRAME_INTERVAL);
        if !(last || (step.revealed > 0 && due)) {
            return;
        }
        let (rows, columns) = self.term.size();
        let status = format!(
            "step {}/{} · t = {} · {} network call{}",
            step.index + 1,
            self.steps,
            step.t_next,
            step.network_calls,
            if step.network_calls == 1 { "" } else { "s" }
        );
        let mut lines = vec![status];
        for row in step.tokens.chunks(self.seq_len) {
            lines.extend(wrap(&visible(self.vocab, row), columns.max(10) as usize));
        }
        let room = (rows as usize).saturating_sub(1).max(2);
        if lines.len() > room {
            let hidden = lines.len() - (room - 1);
            lines.truncate(room - 1);
            lines.push(format!("… {hidden} more lines"));
        }
        self.clear();
        // A terminal that went away mid-animation only loses the animation.
        let _ = self.term.write_str(&(lines.join("\n") + "\n"));
        let _ = self.term.flush();
        self.drawn = lines.len();
        self.last_frame = Some(Instant::now());
    }

    /// Removes the frame, leaving the screen for the final text.
    pub fn finish(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if self.drawn > 0 {
            let _ = self.term.move_cursor_up(self.drawn);
            let _ = self.term.clear_to_end_of_screen();
            self.drawn = 0;
        }
    }
}

/// Tokens as one line of visible glyphs.
fn visible(vocab: &Vocab, tokens: &[u32]) -> String {
    let space = if vocab.chars_in_order().is_some() {
        '·'
    } else {
        ' '
    };
    vocab
        .decode(tokens)
        .chars()
        .map(|c| match c {
            ' ' => space,
            '\n' => '⏎',
            '\t' => '→',
            c if c.is_control() => char::REPLACEMENT_CHARACTER,
            c => c,
        })
        .collect()
}

/// `text` cut into lines of at most `width` terminal columns.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    let mut line = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = console::measure_text_width(c.encode_utf8(&mut [0; 4]));
        if used + w > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            used = 0;
        }
        line.push(c);
        used += w;
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::MASK_GLYPH;

    #[test]
    fn frames_show_masks_and_spaces() {
        let v = Vocab::text8();
        assert_eq!(visible(&v, &[8, 0, 27, 9]), format!("h·{MASK_GLYPH}i"));
        assert_eq!(visible(&Vocab::gpt2(), &[15496, 198, 995]), "Hello⏎ world");
    }

    #[test]
    fn lines_fit_the_width() {
        assert_eq!(wrap("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(wrap("", 3), [""]);
        // Wide characters take two columns.
        assert_eq!(wrap("日本語", 4), ["日本", "語"]);
    }
}
