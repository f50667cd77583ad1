//! Numeric ranges that a parameter must fall in, with the messages and codes OpenAI uses, so
//! every range check in Easel reads the same to a client whichever layer makes it.

use crate::error::{CoreError, InvalidCode};

/// An inclusive integer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
}

impl IntRange {
    pub const fn new(min: i64, max: i64) -> Self {
        Self { min, max }
    }

    /// `value` if it is in range; otherwise OpenAI's `integer_below_min_value` or
    /// `integer_above_max_value` naming `param`.
    pub fn check(&self, param: &str, value: i64) -> Result<i64, CoreError> {
        let (min, max) = (self.min, self.max);
        if value < min {
            Err(CoreError::invalid(
                param,
                InvalidCode::IntegerBelowMinValue,
                format!(
                    "Invalid '{param}': integer below minimum value. Expected a value >= {min}, but got {value} instead."
                ),
            ))
        } else if value > max {
            Err(CoreError::invalid(
                param,
                InvalidCode::IntegerAboveMaxValue,
                format!(
                    "Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got {value} instead."
                ),
            ))
        } else {
            Ok(value)
        }
    }
}

/// A range of numbers, inclusive at the top and inclusive or exclusive at the bottom
/// (`strength` is `(0, 1]` where zero would mean no denoising at all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatRange {
    pub min: f32,
    pub max: f32,
    pub min_exclusive: bool,
}

impl FloatRange {
    pub const fn new(min: f32, max: f32) -> Self {
        Self { min, max, min_exclusive: false }
    }

    /// `(min, max]`.
    pub const fn above(min: f32, max: f32) -> Self {
        Self { min, max, min_exclusive: true }
    }

    pub fn contains(&self, value: f32) -> bool {
        let low = if self.min_exclusive { value > self.min } else { value >= self.min };
        low && value <= self.max
    }

    /// `value` if it is in range; otherwise `invalid_value` naming `param` and the range.
    pub fn check(&self, param: &str, value: f32) -> Result<f32, CoreError> {
        if self.contains(value) {
            return Ok(value);
        }
        let (min, max) = (self.min, self.max);
        let expected = if self.min_exclusive {
            format!("a number greater than {min} and at most {max}")
        } else {
            format!("a number between {min} and {max}")
        };
        Err(CoreError::invalid_value(
            param,
            format!("Invalid '{param}': expected {expected}, but got {value} instead."),
        ))
    }
}

impl std::fmt::Display for IntRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ranges_name_the_bound() {
        let r = IntRange::new(1, 10);
        assert_eq!(r.check("n", 3).unwrap(), 3);
        let CoreError::InvalidRequest { code, message, .. } = r.check("n", 0).unwrap_err() else { panic!() };
        assert_eq!(code, InvalidCode::IntegerBelowMinValue);
        assert!(message.contains(">= 1"), "{message}");
        let CoreError::InvalidRequest { code, .. } = r.check("n", 11).unwrap_err() else { panic!() };
        assert_eq!(code, InvalidCode::IntegerAboveMaxValue);
    }

    #[test]
    fn float_ranges_may_exclude_their_minimum() {
        let strength = FloatRange::above(0.0, 1.0);
        assert!(strength.contains(1.0) && strength.contains(0.01));
        assert!(!strength.contains(0.0) && !strength.contains(1.01) && !strength.contains(f32::NAN));
        assert!(strength.check("strength", 0.0).unwrap_err().to_string().contains("greater than 0"));
        assert!(FloatRange::new(0.0, 50.0).contains(0.0));
    }
}
