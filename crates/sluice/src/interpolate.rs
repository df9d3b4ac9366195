//! Environment variable interpolation in pipeline files, done on the text before YAML parsing.
//!
//! Syntax:
//! - `${NAME}` is replaced by the value of the environment variable `NAME`; if it is not set, that
//!   is an error naming the variable and where it was used;
//! - `${NAME:-default}` is replaced by the variable's value, or by `default` when the variable is
//!   unset or empty (the default is literal text up to the first `}`);
//! - `$$` is a literal `$` (so `$${NAME}` yields the text `${NAME}`);
//! - any other `$` (including Conduit's bare `$NAME` form, which Sluice does not expand) is kept as
//!   is.
//!
//! `${...}` inside YAML comments is left alone. The value is inserted as text, so quote the YAML
//! scalar if a value may contain characters YAML treats specially (`: `, ` #`, a leading `*`...).
//!
//! Interpolation keeps a [`SourceMap`] so that positions in the interpolated text (where the YAML
//! parser reports errors) map back to lines and columns of the file as written.

use std::fmt;

/// Where a byte of interpolated text came from in the original text.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// For each line of the interpolated text (0-based), the line info.
    lines: Vec<LineMap>,
}

#[derive(Debug, Clone, Default)]
struct LineMap {
    /// 1-based line in the original text.
    original_line: usize,
    /// Replacements on this output line, in order: (output column start, output length,
    /// original column start, original length), columns 0-based in bytes.
    replacements: Vec<(usize, usize, usize, usize)>,
    /// True for the extra lines produced by a value containing a newline: every column on them
    /// maps to the start of the original line.
    continuation: bool,
}

impl SourceMap {
    /// Maps a 1-based (line, column) of the interpolated text to a 1-based (line, column) of the
    /// original text.
    pub fn original(&self, line: usize, column: usize) -> (usize, usize) {
        let Some(info) = line.checked_sub(1).and_then(|i| self.lines.get(i)) else {
            return (line, column);
        };
        if info.continuation {
            return (info.original_line, 1);
        }
        let col0 = column.saturating_sub(1);
        let mut shift: isize = 0;
        for &(out_start, out_len, orig_start, orig_len) in &info.replacements {
            if col0 < out_start {
                break;
            }
            if col0 < out_start + out_len {
                return (info.original_line, orig_start + 1);
            }
            shift = (orig_start + orig_len) as isize - (out_start + out_len) as isize;
        }
        let mapped = (col0 as isize + shift).max(0) as usize;
        (info.original_line, mapped + 1)
    }
}

/// A problem found while interpolating: what and where (1-based line and column of the original
/// text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` in `text` using `lookup` for variable values.
///
/// Returns the interpolated text and its [`SourceMap`], or every problem found (unset variables,
/// unterminated or malformed references).
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, SourceMap), Vec<InterpolationError>> {
    let mut out = String::with_capacity(text.len());
    let mut map = SourceMap::default();
    let mut errors = Vec::new();
    let mut quotes = QuoteState::None;
    for (index, raw_line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let mut info = LineMap {
            original_line: line_no,
            ..LineMap::default()
        };
        let comment_at = comment_start(raw_line, &mut quotes);
        let (active, comment) = raw_line.split_at(comment_at.unwrap_or(raw_line.len()));
        let mut line_out = String::with_capacity(raw_line.len());
        let bytes = active.as_bytes();
        let mut i = 0;
        let mut literal_start = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            line_out.push_str(&active[literal_start..i]);
            match bytes.get(i + 1) {
                Some(b'$') => {
                    info.replacements.push((line_out.len(), 1, i, 2));
                    line_out.push('$');
                    i += 2;
                }
                Some(b'{') => {
                    let column = active[..i].chars().count() + 1;
                    let Some(close) = active[i + 2..].find('}') else {
                        errors.push(InterpolationError {
                            line: line_no,
                            column,
                            message: "unterminated \"${\": expected \"}\" on the same line"
                                .to_string(),
                        });
                        i = bytes.len();
                        literal_start = i;
                        continue;
                    };
                    let inner = &active[i + 2..i + 2 + close];
                    let end = i + 2 + close + 1;
                    match expand(inner, &lookup) {
                        Ok(value) => {
                            info.replacements
                                .push((line_out.len(), value.len(), i, end - i));
                            line_out.push_str(&value);
                        }
                        Err(message) => errors.push(InterpolationError {
                            line: line_no,
                            column,
                            message,
                        }),
                    }
                    i = end;
                }
                _ => {
                    line_out.push('$');
                    i += 1;
                }
            }
            literal_start = i;
        }
        line_out.push_str(&active[literal_start..]);
        line_out.push_str(comment);
        // A value with newlines makes several output lines out of one input line.
        let extra_lines = line_out.trim_end_matches('\n').matches('\n').count();
        map.lines.push(info);
        for _ in 0..extra_lines {
            map.lines.push(LineMap {
                original_line: line_no,
                replacements: Vec::new(),
                continuation: true,
            });
        }
        out.push_str(&line_out);
    }
    if errors.is_empty() {
        Ok((out, map))
    } else {
        Err(errors)
    }
}

/// Expands the inside of one `${...}`.
fn expand(inner: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    if !is_valid_name(name) {
        return Err(format!(
            "invalid environment variable reference \"${{{inner}}}\": expected ${{NAME}} or \
             ${{NAME:-default}}, where NAME is letters, digits and underscores"
        ));
    }
    match (lookup(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_string()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable \"{name}\" is not set (write ${{{name}:-default}} to give it a \
             default)"
        )),
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether the scanner is inside a quoted YAML scalar (which may span lines).
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    None,
    Single,
    Double,
}

/// Byte offset where a YAML comment starts on this line, if any: a `#` at the start of the line or
/// after whitespace, outside quoted scalars. Updates the quote state carried across lines.
fn comment_start(line: &str, quotes: &mut QuoteState) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let at_token_start = i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'[' | b'{' | b',');
        match *quotes {
            QuoteState::Single => {
                if b == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        *quotes = QuoteState::None;
                    }
                }
            }
            QuoteState::Double => {
                if b == b'\\' {
                    i += 1;
                } else if b == b'"' {
                    *quotes = QuoteState::None;
                }
            }
            QuoteState::None => {
                if b == b'#' && (i == 0 || matches!(bytes[i - 1], b' ' | b'\t')) {
                    return Some(i);
                }
                if at_token_start && b == b'\'' {
                    *quotes = QuoteState::Single;
                } else if at_token_start && b == b'"' {
                    *quotes = QuoteState::Double;
                }
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OUT" => Some("/tmp/out.txt".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Vec<InterpolationError>> {
        interpolate(text, env).map(|(t, _)| t)
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(run("path: ${OUT}\n").expect("ok"), "path: /tmp/out.txt\n");
        assert_eq!(run("p: ${NOPE:-x.txt}\n").expect("ok"), "p: x.txt\n");
        assert_eq!(run("p: ${EMPTY:-dflt}\n").expect("ok"), "p: dflt\n");
        assert_eq!(run("p: ${OUT:-dflt}\n").expect("ok"), "p: /tmp/out.txt\n");
        assert_eq!(run("p: ${NOPE:-}\n").expect("ok"), "p: \n");
        assert_eq!(
            run("p: a${OUT}b${OUT}\n").expect("ok"),
            "p: a/tmp/out.txtb/tmp/out.txt\n"
        );
    }

    #[test]
    fn dollar_escapes_and_bare_dollars_stay() {
        assert_eq!(run("p: $${OUT}\n").expect("ok"), "p: ${OUT}\n");
        assert_eq!(
            run("p: cost $5 and $OUT\n").expect("ok"),
            "p: cost $5 and $OUT\n"
        );
        assert_eq!(run("p: end$").expect("ok"), "p: end$");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it_and_its_line() {
        let errs = run("a: 1\nb: ${MISSING}\nc: ${ALSO_MISSING}\n").expect_err("unset");
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].line, 2);
        assert_eq!(errs[0].column, 4);
        assert!(
            errs[0].message.contains("\"MISSING\" is not set"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[1].line, 3);
        assert!(errs[1].message.contains("ALSO_MISSING"));
    }

    #[test]
    fn malformed_references_are_errors() {
        let errs = run("a: ${OUT\n").expect_err("unterminated");
        assert!(errs[0].message.contains("unterminated"), "{}", errs[0]);
        let errs = run("a: ${1X}\n").expect_err("bad name");
        assert!(errs[0].message.contains("invalid environment variable"));
        let errs = run("a: ${}\n").expect_err("empty");
        assert_eq!(errs[0].column, 4);
    }

    #[test]
    fn comments_are_not_interpolated() {
        let text = "# uses ${MISSING}\na: x # ${MISSING}\nb: 'q # ${OUT}'\nc: \"h#${OUT}\"\n";
        let out = run(text).expect("comments skipped");
        assert_eq!(
            out,
            "# uses ${MISSING}\na: x # ${MISSING}\nb: 'q # /tmp/out.txt'\nc: \"h#/tmp/out.txt\"\n"
        );
    }

    #[test]
    fn quotes_inside_plain_scalars_do_not_hide_comments() {
        let out = run("a: it's # ${MISSING}\n").expect("comment after plain scalar");
        assert_eq!(out, "a: it's # ${MISSING}\n");
    }

    #[test]
    fn source_map_maps_columns_back() {
        let (out, map) = interpolate("x: 1\npath: ${OUT} tail\n", env).expect("ok");
        let tail_col = out
            .lines()
            .nth(1)
            .expect("line")
            .find("tail")
            .expect("tail")
            + 1;
        assert_eq!(map.original(2, tail_col), (2, "path: ${OUT} ".len() + 1));
        // Inside the replacement maps to the start of the reference.
        assert_eq!(map.original(2, 8), (2, 7));
        // Before any replacement nothing moves.
        assert_eq!(map.original(2, 1), (2, 1));
    }

    #[test]
    fn values_with_newlines_keep_later_lines_mapped() {
        let (out, map) = interpolate("a: ${MULTI}\nb: 2\n", env).expect("ok");
        assert_eq!(out, "a: a\nb\nb: 2\n");
        assert_eq!(map.original(3, 1), (2, 1));
        assert_eq!(map.original(2, 1), (1, 1));
    }
}
