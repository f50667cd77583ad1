//! Validated values of the Images API.
//!
//! Each type has one parser (`FromStr` or a `parse` function) that says exactly what is wrong with
//! a bad value; the wire crate turns those messages into OpenAI error envelopes with the right
//! `param`. Model-specific rules (which sizes a model can make) live in `easel_core::backend`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A width and height in pixels, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Parses `WxH` (OpenAI) or `W*H` (DashScope); surrounding spaces are tolerated.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (w, h) = text
            .split_once(['x', 'X', '*', '×'])
            .ok_or_else(|| format!("Invalid size '{text}': expected WIDTHxHEIGHT, for example 1024x1024."))?;
        let parse = |s: &str| s.trim().parse::<u32>().ok().filter(|v| *v > 0);
        match (parse(w), parse(h)) {
            (Some(width), Some(height)) => Ok(Self { width, height }),
            _ => Err(format!(
                "Invalid size '{text}': width and height must be positive integers, for example 1024x1024."
            )),
        }
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// The `size` a client asked for: a concrete size or `auto` (the model chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRequest {
    Auto,
    Exact(ImageSize),
}

impl FromStr for SizeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") { Ok(Self::Auto) } else { ImageSize::parse(s).map(Self::Exact) }
    }
}

/// Declares a string enum with its wire names, `FromStr` with a helpful error, `as_str` and serde.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "Invalid value: '{other}'. Supported values are: {}.",
                        quote_list(&[$($text),+])
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        /// A string with the wire names as its `enum`, for the server's OpenAPI document.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

/// `'a', 'b', and 'c'`, the way OpenAI lists allowed values in its messages.
pub fn quote_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        2 => format!("{} and {}", quoted[0], quoted[1]),
        n => format!("{}, and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

wire_enum!(
    /// The encoded format of a delivered image.
    OutputFormat { Png = "png", Jpeg = "jpeg", Webp = "webp" }
);

/// PNG unless the client says otherwise, as OpenAI does.
impl Default for OutputFormat {
    fn default() -> Self {
        Self::Png
    }
}

impl OutputFormat {
    pub const fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }
    pub const fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
    pub const fn supports_alpha(self) -> bool {
        !matches!(self, Self::Jpeg)
    }
    /// The format named by a file extension, `jpg` included.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }
}

wire_enum!(
    /// Requested quality. `standard` and `hd` are the DALL·E names; the rest the GPT image names.
    Quality { Auto = "auto", Low = "low", Medium = "medium", High = "high", Standard = "standard", Hd = "hd" }
);

wire_enum!(
    /// Background handling for models that can make transparent images.
    Background { Auto = "auto", Transparent = "transparent", Opaque = "opaque" }
);

#[expect(clippy::derivable_impls, reason = "`wire_enum!` declares the enum, and its variants take no attributes")]
impl Default for Background {
    fn default() -> Self {
        Self::Auto
    }
}

impl Background {
    /// The background reported back: `transparent` only when asked for (and so possible).
    pub const fn resolved(self) -> Self {
        match self {
            Self::Transparent => Self::Transparent,
            Self::Auto | Self::Opaque => Self::Opaque,
        }
    }
}

wire_enum!(
    /// How images are returned: inline base64 or a hosted, signed, expiring URL.
    ResponseFormat { Url = "url", B64Json = "b64_json" }
);

wire_enum!(
    /// DALL·E 3 style.
    Style { Vivid = "vivid", Natural = "natural" }
);

wire_enum!(
    /// Content moderation level of the GPT image models.
    Moderation { Auto = "auto", Low = "low" }
);

wire_enum!(
    /// How closely an edit should follow the input images.
    InputFidelity { Low = "low", High = "high" }
);

wire_enum!(
    /// The three operations of the Images API.
    Operation { Generate = "generate", Edit = "edit", Variation = "variation" }
);

impl Operation {
    /// The prefix of streaming event types for this operation.
    pub const fn event_prefix(self) -> &'static str {
        match self {
            Self::Generate | Self::Variation => "image_generation",
            Self::Edit => "image_edit",
        }
    }
}

/// The encoded format of an input image, found from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Png,
    Jpeg,
    Webp,
}

impl InputFormat {
    pub const fn as_output(self) -> OutputFormat {
        match self {
            Self::Png => OutputFormat::Png,
            Self::Jpeg => OutputFormat::Jpeg,
            Self::Webp => OutputFormat::Webp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_dialects() {
        assert_eq!(ImageSize::parse("1280x720").unwrap(), ImageSize::new(1280, 720));
        assert_eq!(ImageSize::parse("1024*768").unwrap(), ImageSize::new(1024, 768));
        assert_eq!(ImageSize::parse(" 64X32 ").unwrap(), ImageSize::new(64, 32));
        assert!(ImageSize::parse("0x10").is_err());
        assert!(ImageSize::parse("big").is_err());
        assert!(ImageSize::parse("10x").is_err());
        assert_eq!("auto".parse::<SizeRequest>().unwrap(), SizeRequest::Auto);
    }

    #[test]
    fn enums_list_allowed_values_on_error() {
        let err = "gif".parse::<OutputFormat>().unwrap_err();
        assert_eq!(err, "Invalid value: 'gif'. Supported values are: 'png', 'jpeg', and 'webp'.");
        assert_eq!("b64_json".parse::<ResponseFormat>().unwrap(), ResponseFormat::B64Json);
    }
}
