//! The binary encoding of a [`Command`]: what the raft log stores, what every
//! follower receives and what apply decodes, as the same bytes.
//!
//! DESIGN. A command is encoded once, by the node that proposes it. The bytes
//! are versioned (`MAGIC`, then a version byte) so a log written by one
//! release is read by the next: [`decode`] reads every version it knows, and
//! commands logged before this encoding existed (serde_json text, which always
//! starts with `{`) as well. The stored fixtures under `tests/fixtures/` pin
//! both: a change that would make an old log decode differently fails
//! `old_encodings_decode_to_the_same_commands`.
//!
//! Version 1 is MessagePack (named fields, so fields that are left out when
//! they hold their default stay optional) around FHIR resources in a compact
//! tagged form ([`value`]). The resource form keeps each number's exact text,
//! as `serde_json`'s `arbitrary_precision` does, so `1.50` stays `1.50` and
//! the content hash is the same whichever encoding a command arrived in.
//!
//! Architecture Invariant: this module knows commands and bytes only; it does
//! not know raft, log indexes or the network.

use crate::command::Command;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde_json::{Map, Number, Value};
use std::fmt;
use std::str::FromStr;

/// First byte of every binary encoding. Never `{` or whitespace, so an old
/// serde_json command cannot be mistaken for one.
pub const MAGIC: u8 = 0xC7;
/// The version [`encode`] writes.
pub const VERSION: u8 = 1;
/// Deepest nesting of arrays and objects a resource may have in the binary
/// form: decoding stops there instead of exhausting the stack.
pub const VALUE_DEPTH_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the command is empty")]
    Empty,
    #[error(
        "the command is encoded with version {0}, which this release cannot read; \
         upgrade this node to the release the rest of the cluster runs"
    )]
    UnknownVersion(u8),
    #[error("the command's first byte {0:#04x} starts no known encoding")]
    UnknownFormat(u8),
    #[error("the command does not decode: {0}")]
    Malformed(String),
}

/// Encode `cmd` in the current binary version.
pub fn encode(cmd: &Command) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(MAGIC);
    out.push(VERSION);
    rmp_serde::encode::write_named(&mut out, cmd).expect("a command always encodes: writing to a Vec cannot fail");
    out
}

/// Decode a command in any encoding a Hale release has written.
pub fn decode(bytes: &[u8]) -> Result<Command, CodecError> {
    match bytes {
        [] => Err(CodecError::Empty),
        [MAGIC, 1, body @ ..] => rmp_serde::from_slice(body).map_err(|e| CodecError::Malformed(e.to_string())),
        [MAGIC, v, ..] => Err(CodecError::UnknownVersion(*v)),
        [MAGIC] => Err(CodecError::Malformed("the version byte is missing".into())),
        // Logged before the binary encoding: serde_json text.
        [b'{', ..] => serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string())),
        [b, ..] => Err(CodecError::UnknownFormat(*b)),
    }
}

/// Serde `with` module for a FHIR resource field: JSON as before in a
/// human-readable format (so serde_json text, hashes and journals are
/// unchanged), the compact tagged form in a binary one.
pub mod value {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            serde::Serialize::serialize(v, s)
        } else {
            let mut buf = Vec::with_capacity(512);
            write_value(&mut buf, v);
            s.serialize_bytes(&buf)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            serde::Deserialize::deserialize(d)
        } else {
            d.deserialize_bytes(ValueBytes)
        }
    }
}

/// [`value`] for an optional resource.
pub mod opt_value {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(v) if s.is_human_readable() => s.serialize_some(v),
            Some(v) => {
                let mut buf = Vec::with_capacity(512);
                write_value(&mut buf, v);
                s.serialize_some(&Bin(&buf))
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        if d.is_human_readable() {
            serde::Deserialize::deserialize(d)
        } else {
            d.deserialize_option(OptVisitor)
        }
    }

    struct Bin<'a>(&'a [u8]);
    impl serde::Serialize for Bin<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an optional resource")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_bytes(ValueBytes).map(Some)
        }
    }
}

struct ValueBytes;

impl<'de> Visitor<'de> for ValueBytes {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a resource in Hale's compact binary form")
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Value, E> {
        let mut r = Reader { b, at: 0 };
        let v = r.value(0).map_err(E::custom)?;
        if r.at != b.len() {
            return Err(E::custom(format!("{} bytes follow the resource", b.len() - r.at)));
        }
        Ok(v)
    }
}

// The compact form: one tag byte, then for a number or string a LEB128 length
// and the UTF-8 text, for an array a count and the items, for an object a
// count and (key length, key, value) per member, in the object's order.
const T_NULL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_NUMBER: u8 = 3;
const T_STRING: u8 = 4;
const T_ARRAY: u8 = 5;
const T_OBJECT: u8 = 6;

fn write_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(T_NULL),
        Value::Bool(false) => out.push(T_FALSE),
        Value::Bool(true) => out.push(T_TRUE),
        Value::Number(n) => {
            out.push(T_NUMBER);
            write_str(out, &n.to_string());
        }
        Value::String(s) => {
            out.push(T_STRING);
            write_str(out, s);
        }
        Value::Array(a) => {
            out.push(T_ARRAY);
            write_len(out, a.len());
            for x in a {
                write_value(out, x);
            }
        }
        Value::Object(m) => {
            out.push(T_OBJECT);
            write_len(out, m.len());
            for (k, x) in m {
                write_str(out, k);
                write_value(out, x);
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let x = *self.b.get(self.at).ok_or("the resource ends early")?;
        self.at += 1;
        Ok(x)
    }

    fn len(&mut self) -> Result<usize, String> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            n |= ((x & 0x7f) as usize) << shift;
            if x & 0x80 == 0 {
                // A count or length can never exceed the bytes left, which
                // also bounds what is allocated for it.
                if n > self.b.len() - self.at {
                    return Err(format!("a length of {n} runs past the end of the resource"));
                }
                return Ok(n);
            }
        }
        Err("a length is longer than 64 bits".into())
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        std::str::from_utf8(s).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > VALUE_DEPTH_MAX {
            return Err(format!("the resource nests deeper than {VALUE_DEPTH_MAX}"));
        }
        Ok(match self.byte()? {
            T_NULL => Value::Null,
            T_FALSE => Value::Bool(false),
            T_TRUE => Value::Bool(true),
            T_NUMBER => {
                let s = self.str()?;
                Value::Number(Number::from_str(s).map_err(|e| format!("bad number {s:?}: {e}"))?)
            }
            T_STRING => Value::String(self.str()?.to_owned()),
            T_ARRAY => {
                let n = self.len()?;
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.value(depth + 1)?);
                }
                Value::Array(a)
            }
            T_OBJECT => {
                let n = self.len()?;
                let mut m = Map::with_capacity(n);
                for _ in 0..n {
                    let k = self.str()?.to_owned();
                    let x = self.value(depth + 1)?;
                    m.insert(k, x);
                }
                Value::Object(m)
            }
            t => return Err(format!("unknown tag {t} at byte {}", self.at - 1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_keep_number_text_and_member_order() {
        let v: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","z":1,"a":[1.50,-0,1e3,12345678901234567890123],"b":{"c":null,"d":true,"e":false,"f":"é\u0000"}}"#,
        )
        .unwrap();
        let mut buf = Vec::new();
        write_value(&mut buf, &v);
        let back = ValueBytes.visit_bytes::<de::value::Error>(&buf).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }

    #[test]
    fn bad_bytes_are_refused_not_panicked_on() {
        let check = |b: &[u8], expect: &str| {
            let e = ValueBytes.visit_bytes::<de::value::Error>(b).unwrap_err().to_string();
            assert!(e.contains(expect), "{b:?}: {e}");
        };
        check(&[], "ends early");
        check(&[T_STRING, 5, b'a'], "runs past the end");
        check(&[T_ARRAY, 0xff, 0xff, 0xff, 0xff, 0x0f], "runs past the end");
        check(&[9], "unknown tag 9");
        check(&[T_NUMBER, 1, b'x'], "bad number");
        check(&[T_NULL, T_NULL], "1 bytes follow");
        let mut deep = [T_ARRAY, 1].repeat(VALUE_DEPTH_MAX + 2);
        deep.push(T_NULL);
        check(&deep, "nests deeper");
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode(&[MAGIC, 9, 0]), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode(b"x"), Err(CodecError::UnknownFormat(b'x'))));
        assert!(matches!(decode(&[MAGIC, 1, 0xc1]), Err(CodecError::Malformed(_))));
    }
}
