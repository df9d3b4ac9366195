//! SQL LIKE patterns over keys, for [`crate::Store::keys`]: `%` matches any run of characters
//! (also none), `_` exactly one character, and `\` makes the next character literal (`\%`, `\_`,
//! `\\`). A lone `\` at the end of a pattern matches a backslash.
//!
//! Matching is on characters (not bytes) and case-sensitive. Backends that scan keys in order use
//! [`LikePattern::literal_prefix`] to start at the first possible key; Redis, whose `SCAN MATCH`
//! takes a glob, uses [`like_to_glob`] or [`like_to_glob_superset`].

/// One element of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// This exact character.
    Literal(char),
    /// Any one character (`_`).
    One,
    /// Any run of characters, also an empty one (`%`).
    Any,
}

/// A LIKE pattern compiled once, to match many keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LikePattern {
    tokens: Vec<Token>,
}

impl LikePattern {
    /// Compiles `pattern`. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Self {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '%' => Token::Any,
                '_' => Token::One,
                '\\' => Token::Literal(chars.next().unwrap_or('\\')),
                other => Token::Literal(other),
            };
            // Runs of `%` match what one does; keeping one keeps matching linear in practice.
            if token == Token::Any && tokens.last() == Some(&Token::Any) {
                continue;
            }
            tokens.push(token);
        }
        LikePattern { tokens }
    }

    /// True if the whole of `text` matches the pattern.
    pub fn matches(&self, text: &str) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut s) = (0usize, 0usize);
        // After the last `%` seen: the token following it and where in `text` it was tried.
        let mut resume: Option<(usize, usize)> = None;
        loop {
            if let Some(token) = tokens.get(t) {
                let rest = &text[s..];
                match token {
                    Token::Any => {
                        resume = Some((t + 1, s));
                        t += 1;
                        continue;
                    }
                    Token::One => {
                        if let Some(c) = rest.chars().next() {
                            s += c.len_utf8();
                            t += 1;
                            continue;
                        }
                    }
                    Token::Literal(want) => {
                        if rest.starts_with(*want) {
                            s += want.len_utf8();
                            t += 1;
                            continue;
                        }
                    }
                }
            } else if s == text.len() {
                return true;
            }
            // Mismatch: let the last `%` swallow one more character and try again from there.
            match resume {
                Some((after, from)) => match text[from..].chars().next() {
                    Some(c) => {
                        let next = from + c.len_utf8();
                        resume = Some((after, next));
                        t = after;
                        s = next;
                    }
                    None => return false,
                },
                None => return false,
            }
        }
    }

    /// The characters every matching text starts with (the pattern up to its first `%` or `_`,
    /// unescaped), so that an ordered scan can begin there and stop once keys no longer start
    /// with it.
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(c) => Some(*c),
                Token::One | Token::Any => None,
            })
            .collect()
    }

    /// True if the pattern has no wildcard, so it matches exactly one text.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }
}

/// True if the whole of `text` matches the LIKE `pattern` (compile a [`LikePattern`] to match
/// many texts).
pub fn matches(pattern: &str, text: &str) -> bool {
    LikePattern::new(pattern).matches(text)
}

/// `text` as a LIKE pattern that matches exactly itself (`%`, `_` and `\` escaped).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Characters a Redis glob treats specially; escaped with `\` to stand for themselves.
const GLOB_SPECIAL: [char; 5] = ['*', '?', '[', ']', '\\'];

/// Appends `c` to a Redis glob so that it matches only itself.
fn push_glob_literal(glob: &mut String, c: char) {
    if GLOB_SPECIAL.contains(&c) {
        glob.push('\\');
    }
    glob.push(c);
}

/// A Redis glob (`SCAN MATCH`, `KEYS`) that matches exactly the keys the LIKE `pattern` matches,
/// or `None` if there is none: Redis globs work on bytes, so `_` (one character, one to four
/// bytes in UTF-8) has no exact glob. Use [`like_to_glob_superset`] then, and check each key
/// with [`matches()`].
pub fn like_to_glob(pattern: &str) -> Option<String> {
    let compiled = LikePattern::new(pattern);
    if compiled.tokens.contains(&Token::One) {
        return None;
    }
    Some(compiled_to_glob(&compiled))
}

/// A Redis glob that matches every key the LIKE `pattern` matches, and possibly more (`_`
/// becomes "one or more bytes"); the caller filters the keys it returns with [`matches()`].
pub fn like_to_glob_superset(pattern: &str) -> String {
    compiled_to_glob(&LikePattern::new(pattern))
}

/// The glob of a compiled pattern, `_` widened to `?*`.
fn compiled_to_glob(compiled: &LikePattern) -> String {
    let mut glob = String::with_capacity(compiled.tokens.len() + 8);
    let mut iter = compiled.tokens.iter().peekable();
    while let Some(token) = iter.next() {
        match token {
            Token::Literal(c) => push_glob_literal(&mut glob, *c),
            Token::Any => glob.push('*'),
            Token::One => {
                glob.push('?');
                // `?*` already covers a following `%`.
                if iter.peek() == Some(&&Token::Any) {
                    iter.next();
                }
                glob.push('*');
            }
        }
    }
    glob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_matches_any_run_including_none() {
        assert!(matches("app||%", "app||"));
        assert!(matches("app||%", "app||k1"));
        assert!(matches("%", ""));
        assert!(matches("%", "anything"));
        assert!(matches("a%b%c", "abc"));
        assert!(matches("a%b%c", "axxbyyc"));
        assert!(!matches("a%b%c", "axxbyy"));
        assert!(matches("%%x%%", "x"));
        assert!(!matches("app||%", "apple"));
    }

    #[test]
    fn underscore_matches_exactly_one_character() {
        assert!(matches("item-_5", "item-05"));
        assert!(!matches("item-_5", "item-5"));
        assert!(!matches("item-_5", "item-105"));
        assert!(
            matches("__", "ü€"),
            "one character each, whatever its bytes"
        );
        assert!(!matches("_", "ü€"));
        assert!(!matches("_", ""));
    }

    #[test]
    fn backslash_escapes_wildcards_and_itself() {
        assert!(matches("100\\%\\_done", "100%_done"));
        assert!(!matches("100\\%\\_done", "100xx_done"));
        assert!(!matches("100\\%\\_done", "100%xdone"));
        assert!(matches("a\\\\b", "a\\b"));
        assert!(matches("a\\", "a\\"), "a trailing lone backslash is itself");
        assert!(
            matches("\\x", "x"),
            "an escaped ordinary character is itself"
        );
    }

    #[test]
    fn matching_is_whole_text_and_case_sensitive() {
        assert!(!matches("abc", "abcd"));
        assert!(!matches("abc", "ab"));
        assert!(!matches("ABC", "abc"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn backtracking_finds_later_matches() {
        assert!(matches("%aab", "aaaab"));
        assert!(matches("%a_b%c", "xxaxbyyaybc"));
        assert!(matches("%||k_", "app||x||k1"));
        assert!(!matches("%||k_", "app||x||k10"));
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(LikePattern::new("app||%").literal_prefix(), "app||");
        assert_eq!(LikePattern::new("a\\%b_c").literal_prefix(), "a%b");
        assert_eq!(LikePattern::new("%x").literal_prefix(), "");
        assert_eq!(LikePattern::new("exact").literal_prefix(), "exact");
        assert!(LikePattern::new("ex\\_act").is_literal());
        assert!(!LikePattern::new("ex_act").is_literal());
    }

    #[test]
    fn escape_round_trips_through_matches() {
        for text in ["plain", "100%_done", "back\\slash", "", "%_\\", "ü||€"] {
            let pattern = escape(text);
            assert!(matches(&pattern, text), "{pattern:?} vs {text:?}");
            assert_eq!(LikePattern::new(&pattern).literal_prefix(), text);
        }
        assert!(!matches(&escape("a%"), "abc"));
    }

    #[test]
    fn globs_escape_redis_metacharacters() {
        assert_eq!(
            like_to_glob("a*b?c[d]e\\\\f%").as_deref(),
            Some("a\\*b\\?c\\[d\\]e\\\\f*")
        );
        assert_eq!(like_to_glob("app||%").as_deref(), Some("app||*"));
        assert_eq!(like_to_glob("100\\%\\_x").as_deref(), Some("100%_x"));
        assert_eq!(like_to_glob("%%").as_deref(), Some("*"));
    }

    #[test]
    fn underscore_has_only_a_superset_glob() {
        assert_eq!(like_to_glob("item-_5"), None);
        assert_eq!(like_to_glob_superset("item-_5"), "item-?*5");
        assert_eq!(like_to_glob_superset("a_%"), "a?*");
        assert_eq!(like_to_glob_superset("a%b"), "a*b");
    }
}
