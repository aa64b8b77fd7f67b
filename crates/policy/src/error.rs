//! The one error type of the crate, and the helpers that place an error at a
//! line and column of the policy text.

use std::ops::Range;

/// Why a policy was rejected: where (1-based line and column in the policy
/// text) and what, with a message that says what to do about it.
///
/// A policy with any error is rejected whole; callers keep the previous policy
/// in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}, column {column}: {message}")]
pub struct PolicyError {
    /// Line of the offending value, starting at 1.
    pub line: usize,
    /// Column (in characters) of the offending value, starting at 1.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl PolicyError {
    /// An error at byte `offset` of `text`.
    pub(crate) fn at_offset(text: &str, offset: usize, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_column(text, offset);
        PolicyError {
            line,
            column,
            message: message.into(),
        }
    }
}

/// Something legal but probably wrong in an accepted policy (for example a
/// rule that can never match), at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}, column {column}: warning: {message}")]
pub struct PolicyWarning {
    /// Line, starting at 1.
    pub line: usize,
    /// Column (in characters), starting at 1.
    pub column: usize,
    /// What looks wrong and what to do.
    pub message: String,
}

impl PolicyWarning {
    /// A warning at byte `offset` of `text`.
    pub(crate) fn at_offset(
        text: &str,
        offset: usize,
        message: impl Into<String>,
    ) -> PolicyWarning {
        let (line, column) = line_column(text, offset);
        PolicyWarning {
            line,
            column,
            message: message.into(),
        }
    }
}

/// Converts a byte offset into a 1-based (line, column), counting columns in
/// characters. Offsets past the end or inside a character are clamped.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Collects validation problems and keeps the one that comes first in the
/// text, so the reported error is the first one a reader would meet.
pub(crate) struct Problems<'a> {
    text: &'a str,
    first: Option<(usize, String)>,
}

impl<'a> Problems<'a> {
    /// An empty collector for problems in `text`.
    pub(crate) fn new(text: &'a str) -> Problems<'a> {
        Problems { text, first: None }
    }

    /// Records a problem at `span` (byte range into the text).
    pub(crate) fn add(&mut self, span: Range<usize>, message: impl Into<String>) {
        let earlier = match &self.first {
            Some((offset, _)) => span.start < *offset,
            None => true,
        };
        if earlier {
            self.first = Some((span.start, message.into()));
        }
    }

    /// `Err` with the first problem, if any was recorded.
    pub(crate) fn finish(self) -> Result<(), PolicyError> {
        match self.first {
            Some((offset, message)) => Err(PolicyError::at_offset(self.text, offset, message)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_line_and_column() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 1), (1, 2));
        assert_eq!(line_column(text, 3), (2, 1));
        // `é` is two bytes but one column.
        assert_eq!(line_column(text, 8), (3, 1));
        assert_eq!(line_column(text, 6), (2, 3));
        assert_eq!(line_column(text, 100), (3, 2));
    }

    #[test]
    fn problems_report_the_earliest_in_the_text() {
        let text = "one\ntwo\nthree";
        let mut problems = Problems::new(text);
        problems.add(8..13, "third");
        problems.add(4..7, "second");
        problems.add(9..10, "later");
        let error = problems.finish().unwrap_err();
        assert_eq!((error.line, error.column), (2, 1));
        assert_eq!(error.message, "second");
        assert_eq!(
            error.to_string(),
            "policy line 2, column 1: second".to_string()
        );
        assert!(Problems::new(text).finish().is_ok());
    }
}
