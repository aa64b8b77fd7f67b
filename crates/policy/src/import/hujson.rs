//! HuJSON to JSON: blanks out `//` and `/* */` comments and trailing commas
//! with spaces, keeping every newline and every byte offset, so that the
//! line and column serde_json reports point at the same place in the file
//! the user wrote.

use super::ImportError;

/// Standard JSON with the same layout as `text`: comments and trailing
/// commas become spaces (one per byte, so offsets do not move), newlines stay.
/// Text inside strings is never touched. An unterminated `/*` comment is a
/// syntax error at its start.
pub(crate) fn standardize(text: &str) -> Result<String, ImportError> {
    let blanks = blank_ranges(text.as_bytes()).map_err(|start| {
        let (line, column) = line_column(text, start);
        ImportError::Syntax {
            line,
            column,
            message: "`/*` comment is never closed; add `*/`".to_string(),
        }
    })?;
    let mut out = String::with_capacity(text.len());
    let mut blanks = blanks.iter().peekable();
    for (offset, c) in text.char_indices() {
        while blanks.next_if(|range| range.1 <= offset).is_some() {}
        let blanked = blanks
            .peek()
            .is_some_and(|&&(start, end)| start <= offset && offset < end);
        if blanked && c != '\n' && c != '\r' {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Byte ranges `[start, end)` to blank, in order: comments, trailing commas
/// and a leading byte-order mark. `Err` holds the offset of an unterminated
/// block comment.
fn blank_ranges(bytes: &[u8]) -> Result<Vec<(usize, usize)>, usize> {
    let mut ranges = Vec::new();
    // A comma seen outside strings, not yet followed by a value: if the next
    // significant byte closes an array or object, the comma is trailing.
    let mut pending_comma: Option<usize> = None;
    let mut i = 0;
    if bytes.starts_with("\u{feff}".as_bytes()) {
        ranges.push((0, 3));
        i = 3;
    }
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' => {
                pending_comma = None;
                i = string_end(bytes, i);
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = bytes
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
                    .map_or(bytes.len(), |n| i + n);
                ranges.push((i, end));
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let body = i + 2;
                let close = bytes
                    .get(body..)
                    .and_then(|rest| rest.windows(2).position(|w| w == b"*/"))
                    .ok_or(i)?;
                let end = body + close + 2;
                ranges.push((i, end));
                i = end;
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b']' | b'}' => {
                if let Some(comma) = pending_comma.take() {
                    ranges.push((comma, comma + 1));
                }
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    ranges.sort_unstable();
    Ok(ranges)
}

/// The offset just past the string starting with the quote at `start`
/// (or the end of input if it is unterminated; serde_json reports that).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// Converts serde_json's position (1-based line, column counted in bytes
/// up to and including the offending byte) into a 1-based character column
/// of `text`, which has the same layout as the JSON serde_json read.
pub(crate) fn char_column(text: &str, line: usize, byte_column: usize) -> usize {
    let Some(line_text) = text.split('\n').nth(line.saturating_sub(1)) else {
        return byte_column.max(1);
    };
    let mut end = byte_column.saturating_sub(1).min(line_text.len());
    while !line_text.is_char_boundary(end) {
        end -= 1;
    }
    line_text.get(..end).unwrap_or_default().chars().count() + 1
}

#[cfg(test)]
mod tests;
