//! How record text becomes search terms, the same way for indexing and for queries.
//!
//! - Words are runs of letters and digits in any script; everything else separates.
//! - Accents and other combining marks are dropped after compatibility decomposition
//!   (`é` → `e`, Arabic short vowels and tatweel disappear), and case is folded: a
//!   query matches however the title was typed.
//! - Scripts written without spaces between words (Chinese, Japanese kana, Thai, Lao,
//!   Khmer, Myanmar) give overlapping pairs of characters instead of words, so that
//!   any two-character part of a title can be found.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The name the tokenizer is registered under in the index.
pub const NAME: &str = "oer";

/// A term and whether it came from a script without word spaces (such terms are
/// character pairs, and typo tolerance makes no sense for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub text: String,
    pub unspaced: bool,
    pub offset: std::ops::Range<usize>,
}

/// Scripts whose words are not separated by spaces.
fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF   // Thai, Lao
        | 0x1000..=0x109F // Myanmar
        | 0x1780..=0x17FF // Khmer
        | 0x3040..=0x30FF // Hiragana, Katakana
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF // Han
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0x20000..=0x2FA1F)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c) || c == '\u{0640}'
}

/// Marks a reader may or may not write: accents on Latin, Greek and Cyrillic letters,
/// Arabic short vowels and Quranic marks, Hebrew points, and the Arabic tatweel. Marks
/// that change the letters of a word (Indic vowel signs, Thai vowels) are kept.
fn is_optional_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F
        | 0x1AB0..=0x1AFF
        | 0x1DC0..=0x1DFF
        | 0x20D0..=0x20FF
        | 0xFE20..=0xFE2F
        | 0x0591..=0x05BD
        | 0x05BF
        | 0x05C1..=0x05C2
        | 0x05C4..=0x05C5
        | 0x05C7
        | 0x0610..=0x061A
        | 0x0640
        | 0x064B..=0x065F
        | 0x0670
        | 0x06D6..=0x06DC
        | 0x06DF..=0x06E4
        | 0x06E7..=0x06E8
        | 0x06EA..=0x06ED)
}

/// Folds a word: compatibility decomposition, optional marks dropped, lower case.
fn fold(word: &str) -> String {
    word.nfkd()
        .filter(|c| !is_optional_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The terms of `text`, in order.
pub fn terms(text: &str) -> Vec<Term> {
    let mut terms = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if !is_word_char(c) {
            chars.next();
            continue;
        }
        let unspaced = is_unspaced(c);
        let mut end = start;
        let mut run: Vec<(usize, char)> = Vec::new();
        while let Some(&(index, c)) = chars.peek() {
            let same_kind = is_word_char(c)
                && (is_unspaced(c) == unspaced || (is_combining_mark(c) && !run.is_empty()));
            if !same_kind {
                break;
            }
            run.push((index, c));
            end = index + c.len_utf8();
            chars.next();
        }
        if unspaced {
            push_pairs(&run, &mut terms);
        } else {
            let folded = fold(&text[start..end]);
            if !folded.is_empty() {
                terms.push(Term {
                    text: folded,
                    unspaced: false,
                    offset: start..end,
                });
            }
        }
    }
    terms
}

/// Overlapping character pairs of a run of unspaced script; a lone character stands
/// for itself. Marks attach to the character before them.
fn push_pairs(run: &[(usize, char)], terms: &mut Vec<Term>) {
    let mut units: Vec<(usize, usize)> = Vec::new();
    for &(index, c) in run {
        let end = index + c.len_utf8();
        match units.last_mut() {
            Some(last) if is_combining_mark(c) => last.1 = end,
            _ => units.push((index, end)),
        }
    }
    let text_of = |from: usize, to: usize| -> String {
        let slice: String = run
            .iter()
            .filter(|(index, _)| *index >= from && *index < to)
            .map(|(_, c)| *c)
            .collect();
        fold(&slice)
    };
    if units.len() == 1 {
        let (from, to) = units[0];
        terms.push(Term {
            text: text_of(from, to),
            unspaced: true,
            offset: from..to,
        });
        return;
    }
    for pair in units.windows(2) {
        let (from, to) = (pair[0].0, pair[1].1);
        terms.push(Term {
            text: text_of(from, to),
            unspaced: true,
            offset: from..to,
        });
    }
}

/// The tokenizer registered with tantivy.
#[derive(Clone, Default)]
pub struct OerTokenizer {
    tokens: Vec<Token>,
}

pub struct OerTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    next: usize,
}

impl Tokenizer for OerTokenizer {
    type TokenStream<'a> = OerTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> OerTokenStream<'a> {
        self.tokens.clear();
        for (position, term) in terms(text).into_iter().enumerate() {
            self.tokens.push(Token {
                offset_from: term.offset.start,
                offset_to: term.offset.end,
                position,
                text: term.text,
                position_length: 1,
            });
        }
        OerTokenStream {
            tokens: &mut self.tokens,
            next: 0,
        }
    }
}

impl TokenStream for OerTokenStream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        terms(text).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn words_fold_case_and_accents_in_any_script() {
        assert_eq!(
            texts("Équations du Second-Degré"),
            ["equations", "du", "second", "degre"]
        );
        assert_eq!(texts("Дроби и ДЕЛЕНИЕ"), ["дроби", "и", "деление"]);
        // With and without short vowels and tatweel, Arabic gives the same term.
        assert_eq!(texts("الْكُسُور"), texts("الكســور"));
        assert_eq!(texts("الكسور العشرية"), ["الكسور", "العشرية"]);
        assert_eq!(texts("हिन्दी पाठ"), ["हिन्दी", "पाठ"]);
    }

    #[test]
    fn unspaced_scripts_become_character_pairs() {
        assert_eq!(texts("学习分数"), ["学习", "习分", "分数"]);
        assert_eq!(texts("数"), ["数"]);
        assert_eq!(texts("math 分数 test"), ["math", "分数", "test"]);
        assert!(terms("分数").iter().all(|t| t.unspaced));
        assert!(terms("math").iter().all(|t| !t.unspaced));
    }

    #[test]
    fn the_tokenizer_streams_the_terms_with_positions() {
        let mut tokenizer = OerTokenizer::default();
        let mut stream = tokenizer.token_stream("Hello, World");
        let mut seen = Vec::new();
        while stream.advance() {
            seen.push((stream.token().text.clone(), stream.token().position));
        }
        assert_eq!(seen, [("hello".to_string(), 0), ("world".to_string(), 1)]);
    }
}
