//! The JSON side: parsing the standardized text into a tree (duplicate keys
//! rejected, since the last one would silently win), JSON paths, and typed
//! access that fails with the path.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::super::{ImportError, hujson};

/// Parses HuJSON `text`; syntax errors carry the line and column in `text`.
pub(super) fn parse(text: &str) -> Result<Value, ImportError> {
    let json = hujson::standardize(text)?;
    serde_json::from_str::<Strict>(&json)
        .map(|strict| strict.0)
        .map_err(|error| {
            let message = error.to_string();
            let suffix = format!(" at line {} column {}", error.line(), error.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            ImportError::Syntax {
                line: error.line(),
                column: hujson::char_column(&json, error.line(), error.column()),
                message: message.to_string(),
            }
        })
}

/// `parent.key`, or `parent["key"]` when the key is not a plain word.
pub(super) fn field_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// `parent[index]`.
pub(super) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// An [`ImportError::Invalid`].
pub(super) fn invalid(path: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// An [`ImportError::Unsupported`].
pub(super) fn unsupported(path: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError::Unsupported {
        path: path.into(),
        message: message.into(),
    }
}

/// The value as an object.
pub(super) fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, ImportError> {
    value.as_object().ok_or_else(|| {
        invalid(
            path,
            format!("expected an object {{…}}, found {}", kind(value)),
        )
    })
}

/// The value as an array.
pub(super) fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, ImportError> {
    value
        .as_array()
        .ok_or_else(|| invalid(path, format!("expected a list […], found {}", kind(value))))
}

/// The value as a string.
pub(super) fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, ImportError> {
    value
        .as_str()
        .ok_or_else(|| invalid(path, format!("expected a string, found {}", kind(value))))
}

/// What a JSON value is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A JSON value whose objects have no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// Builds a [`Value`], failing on a repeated key.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "key `{key}` appears twice in the same object; merge the two entries (only one would take effect)"
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
