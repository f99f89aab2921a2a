//! Vocabularies: characters (text8 and custom char corpora) and GPT-2 BPE.
//!
//! GPT-2 BPE is tiktoken's `r50k_base`, which is GPT-2's encoding (same 50 257 ids, same
//! pre-tokenisation). Text is encoded as ordinary text: a literal "<|endoftext|>" in a
//! document is just characters, and preparation appends the end-of-text id after every
//! document itself.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use crate::spec;

/// Ids in GPT-2's vocabulary, end-of-text included.
pub const GPT2_VOCAB_SIZE: usize = 50_257;
/// GPT-2's end-of-text id, appended after every document.
pub const GPT2_EOT: u32 = 50_256;
/// text8's alphabet: space, then a–z (ids 0–26, mask 27).
pub const TEXT8_ALPHABET: &str = " abcdefghijklmnopqrstuvwxyz";
/// How [`Vocab::decode`] shows the mask id (a diffusion model's absorbing state).
pub const MASK_GLYPH: char = '█';

/// A vocabulary: how ids map to text, its size, and the mask id (= size).
#[derive(Debug, Clone)]
pub struct Vocab {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// One id per character, in sorted order.
    Chars {
        chars: Vec<char>,
        ids: HashMap<char, u32>,
    },
    Gpt2,
}

/// How a vocabulary is recorded in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum VocabMeta {
    /// Characters in id order.
    Char { chars: Vec<char> },
    /// GPT-2 BPE by tiktoken encoding name.
    Gpt2 { encoding: String, eot: u32 },
}

impl Vocab {
    /// text8's 27 characters.
    pub fn text8() -> Vocab {
        Vocab::chars(TEXT8_ALPHABET.chars().collect()).expect("text8's alphabet is valid")
    }

    /// A character vocabulary; ids follow the sorted order of `chars`.
    pub fn chars(mut chars: Vec<char>) -> Result<Vocab> {
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            bail!("a character vocabulary needs at least one character");
        }
        if chars.len() > u16::MAX as usize {
            bail!(
                "the corpus has {} distinct characters; token files store ids as u16, so at most {} fit",
                chars.len(),
                u16::MAX
            );
        }
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Ok(Vocab {
            kind: Kind::Chars { chars, ids },
        })
    }

    /// GPT-2 BPE (tiktoken `r50k_base`).
    pub fn gpt2() -> Vocab {
        Vocab { kind: Kind::Gpt2 }
    }

    /// Number of token ids; the mask id is this value.
    pub fn size(&self) -> usize {
        match &self.kind {
            Kind::Chars { chars, .. } => chars.len(),
            Kind::Gpt2 => GPT2_VOCAB_SIZE,
        }
    }

    /// The absorbing-state id of a diffusion model on this vocabulary (= size).
    pub fn mask_id(&self) -> u32 {
        self.size() as u32
    }

    /// The spec's name for this tokenizer.
    pub fn tokenizer(&self) -> spec::Tokenizer {
        match self.kind {
            Kind::Chars { .. } => spec::Tokenizer::Char,
            Kind::Gpt2 => spec::Tokenizer::Gpt2,
        }
    }

    /// A short human description, e.g. "27 characters" or "GPT-2 BPE (r50k_base)".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Chars { chars, .. } => format!("{} characters", chars.len()),
            Kind::Gpt2 => "GPT-2 BPE (r50k_base, 50257 ids)".to_string(),
        }
    }

    /// Whether this is text8's alphabet.
    pub fn is_text8(&self) -> bool {
        matches!(&self.kind, Kind::Chars { chars, .. } if chars.iter().copied().eq(TEXT8_ALPHABET.chars()))
    }

    /// The characters of a character vocabulary, in id order.
    pub fn chars_in_order(&self) -> Option<&[char]> {
        match &self.kind {
            Kind::Chars { chars, .. } => Some(chars),
            Kind::Gpt2 => None,
        }
    }

    /// Token ids of `text` (GPT-2: ordinary text, no special tokens, no end-of-text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Chars { ids, .. } => text
                .chars()
                .enumerate()
                .map(|(i, c)| match ids.get(&c) {
                    Some(&id) => Ok(id),
                    None => bail!("character {c:?} (at {i}) is not in the vocabulary"),
                })
                .collect(),
            Kind::Gpt2 => Ok(gpt2().encode_ordinary(text)),
        }
    }

    /// Text of `ids`. The mask id shows as [`MASK_GLYPH`], ids beyond it as U+FFFD; GPT-2
    /// byte sequences that are not valid UTF-8 (a window cut inside a character) decode lossily.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mask = self.mask_id();
        match &self.kind {
            Kind::Chars { chars, .. } => ids
                .iter()
                .map(|&id| match chars.get(id as usize) {
                    Some(&c) => c,
                    None if id == mask => MASK_GLYPH,
                    None => char::REPLACEMENT_CHARACTER,
                })
                .collect(),
            Kind::Gpt2 => {
                let mut out = String::new();
                for run in ids.split_inclusive(|&id| id >= mask) {
                    let (text, last) = match run.split_last() {
                        Some((&last, text)) if last >= mask => (text, Some(last)),
                        _ => (run, None),
                    };
                    let bytes = gpt2()
                        .decode_bytes(text)
                        .expect("ids below the mask id are GPT-2 ids");
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    match last {
                        Some(id) if id == mask => out.push(MASK_GLYPH),
                        Some(_) => out.push(char::REPLACEMENT_CHARACTER),
                        None => {}
                    }
                }
                out
            }
        }
    }

    /// The `meta.json` record of this vocabulary.
    pub fn to_meta(&self) -> VocabMeta {
        match &self.kind {
            Kind::Chars { chars, .. } => VocabMeta::Char {
                chars: chars.clone(),
            },
            Kind::Gpt2 => VocabMeta::Gpt2 {
                encoding: "r50k_base".to_string(),
                eot: GPT2_EOT,
            },
        }
    }

    /// The vocabulary a `meta.json` records.
    pub fn from_meta(meta: &VocabMeta) -> Result<Vocab> {
        match meta {
            VocabMeta::Char { chars } => {
                if !chars.is_sorted() || chars.windows(2).any(|w| w[0] == w[1]) {
                    bail!("the character vocabulary is not sorted and unique");
                }
                Vocab::chars(chars.clone())
            }
            VocabMeta::Gpt2 { encoding, eot } => {
                if encoding != "r50k_base" || *eot != GPT2_EOT {
                    bail!(
                        "unknown GPT-2 encoding {encoding:?} with end-of-text {eot} (expected \"r50k_base\", {GPT2_EOT})"
                    );
                }
                Ok(Vocab::gpt2())
            }
        }
    }
}

/// The shared GPT-2 encoder (built once; its tables are embedded in tiktoken-rs).
fn gpt2() -> &'static CoreBPE {
    tiktoken_rs::r50k_base_singleton()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected ids come from GPT-2's published vocabulary (encoder.json) and from test
    // vectors of other GPT-2 tokenizer implementations, never from this code.
    #[test]
    fn gpt2_ids_match_published_vectors() {
        let v = Vocab::gpt2();
        assert_eq!(v.encode("Hello world").unwrap(), [15496, 995]);
        assert_eq!(v.encode("Hello, world!").unwrap(), [15496, 11, 995, 0]);
        assert_eq!(v.encode(" the").unwrap(), [262]);
        assert_eq!(
            v.encode("I can feel the magic, can you?\nПривет мир!!!")
                .unwrap(),
            [
                40, 460, 1254, 262, 5536, 11, 460, 345, 30, 198, 140, 253, 21169, 18849, 38857,
                16843, 20375, 12466, 120, 18849, 21169, 10185
            ]
        );
    }

    #[test]
    fn gpt2_special_token_text_is_ordinary_text() {
        let v = Vocab::gpt2();
        let ids = v.encode("Hello world 1<|endoftext|>Hello world 2").unwrap();
        assert_eq!(
            ids,
            [
                15496, 995, 352, 27, 91, 437, 1659, 5239, 91, 29, 15496, 995, 362
            ]
        );
        assert!(!ids.contains(&GPT2_EOT));
    }

    #[test]
    fn gpt2_decode_round_trips_and_shows_masks() {
        let v = Vocab::gpt2();
        let text = "I can feel the magic, can you?\nПривет мир!!!";
        assert_eq!(v.decode(&v.encode(text).unwrap()), text);
        assert_eq!(v.decode(&[GPT2_EOT]), "<|endoftext|>");
        assert_eq!(v.decode(&[15496, v.mask_id(), 995]), "Hello█ world");
        assert_eq!(v.mask_id(), 50257);
    }

    #[test]
    fn text8_ids() {
        let v = Vocab::text8();
        assert_eq!(v.size(), 27);
        assert_eq!(v.mask_id(), 27);
        assert!(v.is_text8());
        assert_eq!(v.encode(" az").unwrap(), [0, 1, 26]);
        assert_eq!(v.decode(&[8, 9, 0, 27, 99]), "hi █\u{FFFD}");
        assert!(v.encode("A").is_err());
    }

    #[test]
    fn meta_round_trip() {
        for v in [
            Vocab::text8(),
            Vocab::gpt2(),
            Vocab::chars(vec!['b', 'a', '\n']).unwrap(),
        ] {
            let json = serde_json::to_string(&v.to_meta()).unwrap();
            let back = Vocab::from_meta(&serde_json::from_str(&json).unwrap()).unwrap();
            assert_eq!(back.to_meta(), v.to_meta());
        }
        let unsorted = VocabMeta::Char {
            chars: vec!['b', 'a'],
        };
        assert!(Vocab::from_meta(&unsorted).is_err());
    }
}
