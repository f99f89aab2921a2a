//! The synthetic corpus: a small invented language over text8's alphabet, generated
//! in-process from a seed, so quick starts and tests need no download and decode exactly
//! like text8.
//!
//! The language is a probabilistic grammar over a lexicon of about 600 invented words:
//!
//! ```text
//! sentence    := noun-phrase(g) verb-phrase          g: gender, 0 or 1, each 1/2
//! verb-phrase := transitive noun-phrase(g')          (0.6; the object's noun prefers the
//!                                                     verb's topic, see below)
//!              | intransitive [adverb]                (0.4; adverb with 0.3)
//! noun-phrase := det(g) adjective(g){0,1,2} noun(g)   (0, 1, 2 adjectives: 0.5, 0.35, 0.15)
//! ```
//!
//! Determiners, adjectives (one form per gender) and nouns agree in gender; each class draws
//! its words from a Zipf law (weight 1/rank), with short words at the frequent ranks. Nouns
//! fall into 8 topics; a transitive verb has a topic, and its object noun comes from that
//! topic with probability 0.8 (Zipf within the topic) or from any noun of the gender
//! otherwise. Words end with a space; there is no punctuation.
//!
//! Every word is unique across classes and forms, so the text determines every choice that
//! produced it, and its entropy rate is exactly the expected information of a sentence's
//! choices divided by its expected length in characters (renewal-reward over i.i.d.
//! sentences): [`Language::entropy_bits_per_char`], 0.974 bits per character for corpus
//! seed 0 (0.96–0.98 for other seeds) against log2(27) ≈ 4.75 for uniform characters. A
//! perfect model reaches it; bits/token of a trained model can be read against it.

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::rng::{Stream, rng};
use crate::spec::Split;

const ONSETS: [&str; 18] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr", "pl", "kr",
];
const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
const CODAS: [&str; 3] = ["n", "r", "s"];
/// Adjective endings for gender 0 and 1.
const GENDER_SUFFIX: [&str; 2] = ["a", "o"];
const DETERMINERS_PER_GENDER: usize = 3;
const ADJECTIVES: usize = 60;
const NOUNS_PER_GENDER: usize = 150;
const TRANSITIVE_VERBS: usize = 80;
const INTRANSITIVE_VERBS: usize = 40;
const ADVERBS: usize = 20;
const TOPICS: usize = 8;
const P_TRANSITIVE: f64 = 0.6;
const P_ADVERB: f64 = 0.3;
const P_ON_TOPIC: f64 = 0.8;
const ADJECTIVE_COUNTS: [f64; 3] = [0.5, 0.35, 0.15];

/// A finite distribution, sampled by inverse CDF; tracks the information of each outcome.
#[derive(Debug, Clone)]
struct Dist {
    p: Vec<f64>,
    cdf: Vec<f64>,
}

impl Dist {
    fn new(weights: &[f64]) -> Dist {
        let total: f64 = weights.iter().sum();
        let p: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut acc = 0.0;
        let cdf = p
            .iter()
            .map(|x| {
                acc += x;
                acc
            })
            .collect();
        Dist { p, cdf }
    }

    fn zipf(n: usize) -> Dist {
        Dist::new(&(1..=n).map(|r| 1.0 / r as f64).collect::<Vec<_>>())
    }

    fn sample(&self, rng: &mut ChaCha8Rng, bits: &mut f64) -> usize {
        let u: f64 = rng.random::<f64>() * self.cdf[self.cdf.len() - 1];
        let i = self.cdf.partition_point(|&c| c <= u).min(self.p.len() - 1);
        *bits -= self.p[i].log2();
        i
    }

    fn entropy(&self) -> f64 {
        self.p
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|p| -p * p.log2())
            .sum()
    }

    /// Expected value of `f(outcome)`.
    fn mean(&self, f: impl Fn(usize) -> f64) -> f64 {
        self.p.iter().enumerate().map(|(i, p)| p * f(i)).sum()
    }
}

/// The lexicon and the grammar's distributions, built from a corpus seed.
#[derive(Debug, Clone)]
pub struct Language {
    determiners: [Vec<String>; 2],
    /// adjectives[i][g]: the form of adjective i for gender g.
    adjectives: Vec<[String; 2]>,
    nouns: [Vec<String>; 2],
    transitive: Vec<String>,
    intransitive: Vec<String>,
    adverbs: Vec<String>,
    gender: Dist,
    transitive_or_not: Dist,
    adverb_or_not: Dist,
    determiner: Dist,
    adjective_count: Dist,
    adjective: Dist,
    /// Subject nouns of each gender.
    noun: Dist,
    /// object[v]: object nouns (ranks within either gender) after transitive verb v.
    object: Vec<Dist>,
    transitive_verb: Dist,
    intransitive_verb: Dist,
    adverb: Dist,
}

impl Language {
    pub fn new(corpus_seed: u64) -> Language {
        let mut rng = rng(corpus_seed, Stream::Data, &[0]);
        let mut seen = HashSet::new();
        let mut words = |n: usize, syllables: (usize, usize), rng: &mut ChaCha8Rng| {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let w = word(rng, syllables);
                if seen.insert(w.clone()) {
                    out.push(w);
                }
            }
            // Short words at the frequent ranks, as in natural languages.
            out.sort_by_key(String::len);
            out
        };
        let determiners = [
            words(DETERMINERS_PER_GENDER, (1, 1), &mut rng),
            words(DETERMINERS_PER_GENDER, (1, 1), &mut rng),
        ];
        let nouns = [
            words(NOUNS_PER_GENDER, (2, 3), &mut rng),
            words(NOUNS_PER_GENDER, (2, 3), &mut rng),
        ];
        let transitive = words(TRANSITIVE_VERBS, (2, 2), &mut rng);
        let intransitive = words(INTRANSITIVE_VERBS, (2, 2), &mut rng);
        let adverbs = words(ADVERBS, (2, 3), &mut rng);
        let mut adjectives = Vec::with_capacity(ADJECTIVES);
        while adjectives.len() < ADJECTIVES {
            let stem = word(&mut rng, (2, 2));
            let forms = GENDER_SUFFIX.map(|s| format!("{stem}{s}"));
            if !seen.contains(&forms[0]) && !seen.contains(&forms[1]) {
                seen.extend(forms.iter().cloned());
                adjectives.push(forms);
            }
        }
        adjectives.sort_by_key(|f| f[0].len());

        let noun = Dist::zipf(NOUNS_PER_GENDER);
        let object = (0..TRANSITIVE_VERBS)
            .map(|v| {
                let topic = v % TOPICS;
                // Zipf within the verb's topic, mixed with Zipf over all nouns.
                let on_topic = Dist::new(
                    &(0..NOUNS_PER_GENDER)
                        .map(|n| if n % TOPICS == topic { noun.p[n] } else { 0.0 })
                        .collect::<Vec<_>>(),
                );
                Dist::new(
                    &(0..NOUNS_PER_GENDER)
                        .map(|n| P_ON_TOPIC * on_topic.p[n] + (1.0 - P_ON_TOPIC) * noun.p[n])
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        Language {
            determiners,
            adjectives,
            nouns,
            transitive,
            intransitive,
            adverbs,
            gender: Dist::new(&[0.5, 0.5]),
            transitive_or_not: Dist::new(&[P_TRANSITIVE, 1.0 - P_TRANSITIVE]),
            adverb_or_not: Dist::new(&[P_ADVERB, 1.0 - P_ADVERB]),
            determiner: Dist::zipf(DETERMINERS_PER_GENDER),
            adjective_count: Dist::new(&ADJECTIVE_COUNTS),
            adjective: Dist::zipf(ADJECTIVES),
            noun,
            object,
            transitive_verb: Dist::zipf(TRANSITIVE_VERBS),
            intransitive_verb: Dist::zipf(INTRANSITIVE_VERBS),
            adverb: Dist::zipf(ADVERBS),
        }
    }

    /// `tokens` text8 ids of a split (space 0, a–z 1–26), and the information in bits of the
    /// choices behind the whole sentences generated (the last one may be cut by the length).
    pub fn generate(&self, corpus_seed: u64, split: Split, tokens: usize) -> (Vec<u16>, Generated) {
        let mut rng = rng(corpus_seed, Stream::Data, &[1, split as u64]);
        let mut text = Vec::with_capacity(tokens + 64);
        let mut stats = Generated::default();
        while text.len() < tokens {
            self.sentence(&mut rng, &mut text, &mut stats.bits);
            stats.chars = text.len() as u64;
        }
        text.truncate(tokens);
        let ids = text
            .into_iter()
            .map(|b| {
                if b == b' ' {
                    0
                } else {
                    u16::from(b - b'a') + 1
                }
            })
            .collect();
        (ids, stats)
    }

    fn sentence(&self, rng: &mut ChaCha8Rng, out: &mut Vec<u8>, bits: &mut f64) {
        let g = self.gender.sample(rng, bits);
        self.noun_phrase(g, &self.noun, rng, out, bits);
        if self.transitive_or_not.sample(rng, bits) == 0 {
            let v = self.transitive_verb.sample(rng, bits);
            push_word(out, &self.transitive[v]);
            let g = self.gender.sample(rng, bits);
            self.noun_phrase(g, &self.object[v], rng, out, bits);
        } else {
            let v = self.intransitive_verb.sample(rng, bits);
            push_word(out, &self.intransitive[v]);
            if self.adverb_or_not.sample(rng, bits) == 0 {
                push_word(out, &self.adverbs[self.adverb.sample(rng, bits)]);
            }
        }
    }

    fn noun_phrase(
        &self,
        g: usize,
        nouns: &Dist,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<u8>,
        bits: &mut f64,
    ) {
        push_word(out, &self.determiners[g][self.determiner.sample(rng, bits)]);
        for _ in 0..self.adjective_count.sample(rng, bits) {
            push_word(out, &self.adjectives[self.adjective.sample(rng, bits)][g]);
        }
        push_word(out, &self.nouns[g][nouns.sample(rng, bits)]);
    }

    /// The exact entropy rate of the language in bits per character: expected information
    /// of a sentence over its expected length (words plus their spaces).
    pub fn entropy_bits_per_char(&self) -> f64 {
        let chars = |w: &String| w.len() as f64 + 1.0;
        let noun_phrase = |g: usize, nouns: &Dist| -> (f64, f64) {
            let adjectives = self.adjective_count.mean(|k| k as f64);
            let bits = self.determiner.entropy()
                + self.adjective_count.entropy()
                + adjectives * self.adjective.entropy()
                + nouns.entropy();
            let len = self.determiner.mean(|i| chars(&self.determiners[g][i]))
                + adjectives * self.adjective.mean(|i| chars(&self.adjectives[i][g]))
                + nouns.mean(|i| chars(&self.nouns[g][i]));
            (bits, len)
        };
        let either_gender = |f: &dyn Fn(usize) -> (f64, f64)| {
            let (b0, l0) = f(0);
            let (b1, l1) = f(1);
            (self.gender.entropy() + (b0 + b1) / 2.0, (l0 + l1) / 2.0)
        };

        let (subject_bits, subject_len) = either_gender(&|g| noun_phrase(g, &self.noun));
        let object_bits = self
            .transitive_verb
            .mean(|v| either_gender(&|g| noun_phrase(g, &self.object[v])).0);
        let object_len = self
            .transitive_verb
            .mean(|v| either_gender(&|g| noun_phrase(g, &self.object[v])).1);
        let p_transitive = self.transitive_or_not.p[0];
        let p_adverb = self.adverb_or_not.p[0];
        let bits = subject_bits
            + self.transitive_or_not.entropy()
            + p_transitive * (self.transitive_verb.entropy() + object_bits)
            + (1.0 - p_transitive)
                * (self.intransitive_verb.entropy()
                    + self.adverb_or_not.entropy()
                    + p_adverb * self.adverb.entropy());
        let len = subject_len
            + p_transitive
                * (self.transitive_verb.mean(|v| chars(&self.transitive[v])) + object_len)
            + (1.0 - p_transitive)
                * (self
                    .intransitive_verb
                    .mean(|v| chars(&self.intransitive[v]))
                    + p_adverb * self.adverb.mean(|a| chars(&self.adverbs[a])));
        bits / len
    }

    /// Every word form of the lexicon.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.determiners
            .iter()
            .chain(&self.nouns)
            .flatten()
            .chain(self.adjectives.iter().flatten())
            .chain(&self.transitive)
            .chain(&self.intransitive)
            .chain(&self.adverbs)
            .map(String::as_str)
    }
}

/// What [`Language::generate`] produced beyond the ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generated {
    /// Information of all the choices made, in bits.
    pub bits: f64,
    /// Characters of the whole sentences generated.
    pub chars: u64,
}

fn word(rng: &mut ChaCha8Rng, (min, max): (usize, usize)) -> String {
    let syllables = rng.random_range(min..=max);
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
        w.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
        if rng.random_bool(0.2) {
            w.push_str(CODAS[rng.random_range(0..CODAS.len())]);
        }
    }
    w
}

fn push_word(out: &mut Vec<u8>, word: &str) {
    out.extend_from_slice(word.as_bytes());
    out.push(b' ');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_words_are_unique_and_in_text8_alphabet() {
        let lang = Language::new(0);
        let words: Vec<&str> = lang.words().collect();
        let unique: HashSet<&str> = words.iter().copied().collect();
        assert_eq!(
            words.len(),
            unique.len(),
            "a word in two classes makes the text ambiguous"
        );
        assert_eq!(
            words.len(),
            2 * DETERMINERS_PER_GENDER
                + 2 * NOUNS_PER_GENDER
                + 2 * ADJECTIVES
                + TRANSITIVE_VERBS
                + INTRANSITIVE_VERBS
                + ADVERBS
        );
        assert!(
            words
                .iter()
                .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }

    #[test]
    fn same_seed_same_corpus_different_seed_different_corpus() {
        let a = Language::new(3).generate(3, Split::Train, 5000).0;
        let b = Language::new(3).generate(3, Split::Train, 5000).0;
        let c = Language::new(4).generate(4, Split::Train, 5000).0;
        let val = Language::new(3).generate(3, Split::Val, 5000).0;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, val);
        assert_eq!(a.len(), 5000);
        assert!(a.iter().all(|&id| id < 27));
    }

    /// The information of the sampled choices per character converges to the analytic
    /// entropy rate: the formula and the generator describe the same language.
    #[test]
    fn empirical_information_matches_entropy_rate() {
        let lang = Language::new(0);
        let rate = lang.entropy_bits_per_char();
        let (_, generated) = lang.generate(0, Split::Train, 2_000_000);
        let empirical = generated.bits / generated.chars as f64;
        assert!(
            (empirical - rate).abs() < 0.01,
            "empirical {empirical:.4} vs analytic {rate:.4} bits/char"
        );
        assert!(rate > 0.3 && rate < 2.0, "entropy rate {rate}");
    }
}
