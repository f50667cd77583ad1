//! Deserializers for numbers and booleans that also accept their string forms: multipart text
//! parts carry `"2"` and `"true"`, and many JSON clients quote numbers.

use serde::Deserialize;
use serde::de::{Deserializer, Error};
use std::str::FromStr;

#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Value(T),
    Text(String),
}

fn parse<'de, D, T>(d: D, expected: &str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + FromStr,
{
    match Option::<Loose<T>>::deserialize(d) {
        Ok(None) => Ok(None),
        Ok(Some(Loose::Value(v))) => Ok(Some(v)),
        Ok(Some(Loose::Text(t))) if t.trim().is_empty() => Ok(None),
        Ok(Some(Loose::Text(t))) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected {expected}, but got '{t}' instead"))),
        Err(_) => Err(D::Error::custom(format!("expected {expected}"))),
    }
}

pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    parse(d, "a non-negative integer")
}

pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    parse(d, "a non-negative integer")
}

pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    parse(d, "a number")
}

pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    parse(d, "an integer")
}

pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    parse(d, "a boolean")
}
