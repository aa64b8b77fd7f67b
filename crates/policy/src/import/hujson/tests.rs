//! The HuJSON pre-pass: comments and trailing commas vanish, strings that
//! look like comments survive, and positions do not move.

use super::{char_column, line_column, standardize};
use crate::import::ImportError;

/// Standardizes and checks the result is JSON with the same byte length.
fn json(text: &str) -> String {
    let out = standardize(text).unwrap();
    assert_eq!(out.len(), text.len(), "offsets moved for {text:?}");
    assert_eq!(
        out.matches('\n').count(),
        text.matches('\n').count(),
        "newlines changed for {text:?}"
    );
    out
}

fn value(text: &str) -> serde_json::Value {
    serde_json::from_str(&json(text)).unwrap()
}

#[test]
fn comments_and_trailing_commas_become_spaces() {
    let text = "{\n  // line comment\n  \"a\": [1, 2,], /* block */\n  \"b\": {\"c\": 3,},\n}\n";
    assert_eq!(
        json(text),
        "{\n                 \n  \"a\": [1, 2 ],            \n  \"b\": {\"c\": 3 } \n}\n"
    );
    assert_eq!(value(text), serde_json::json!({"a": [1, 2], "b": {"c": 3}}));
}

#[test]
fn strings_that_look_like_comments_are_kept() {
    let text = r#"{
  "url": "https://example.com/a//b", // real comment
  "glob": "/* not a comment */",
  "quote": "say \"hi\" // still a string",
  "backslash": "C:\\dir\\", "after": "x,]",
}"#;
    assert_eq!(
        value(text),
        serde_json::json!({
            "url": "https://example.com/a//b",
            "glob": "/* not a comment */",
            "quote": "say \"hi\" // still a string",
            "backslash": "C:\\dir\\",
            "after": "x,]",
        })
    );
}

#[test]
fn comments_between_trailing_comma_and_bracket_are_blanked_too() {
    let text = "[\"a\", // first\n \"b\", /* last */\n // nothing more\n]";
    assert_eq!(value(text), serde_json::json!(["a", "b"]));
}

#[test]
fn multibyte_text_in_comments_keeps_offsets() {
    let text = "{ /* café → ☕ */ \"k\": \"é\" } // ünïcode";
    assert_eq!(value(text), serde_json::json!({"k": "é"}));
}

#[test]
fn a_comma_before_a_value_is_not_trailing() {
    // A doubled comma stays: serde_json rejects it, as it should.
    let text = "[1,,2]";
    assert_eq!(json(text), "[1,,2]");
    assert!(serde_json::from_str::<serde_json::Value>(&json(text)).is_err());
}

#[test]
fn unterminated_block_comment_is_an_error_at_its_start() {
    let err = standardize("{\n  \"a\": 1 /* oops\n}").unwrap_err();
    assert_eq!(
        err,
        ImportError::Syntax {
            line: 2,
            column: 10,
            message: "`/*` comment is never closed; add `*/`".into(),
        }
    );
}

#[test]
fn byte_order_mark_is_blanked() {
    assert_eq!(value("\u{feff}{\"a\": 1,}"), serde_json::json!({"a": 1}));
}

#[test]
fn positions_count_characters() {
    assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
    assert_eq!(line_column("ab\ncé\nx", 4), (2, 2));
    // serde_json counts bytes: `x` after `"é"` is byte column 7, character column 6.
    assert_eq!(char_column("{\"é\" x}", 1, 7), 6);
    assert_eq!(char_column("abc", 5, 2), 2);
}
