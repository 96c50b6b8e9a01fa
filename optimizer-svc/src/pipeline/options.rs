//! Processing options, validated once from the wire form.

use nws_watermark::pb::{ImageFormat, OptimizeOptions, Position, ResizeFilter};

use super::watermark::DEFAULT_OPACITY;

use crate::OptimizeError;

pub const DEFAULT_TEXT: &str = "NWS Watermark";
pub const MAX_TEXT_CHARS: usize = 200;
pub const DEFAULT_QUALITY: u8 = 85;
pub const DEFAULT_MAX_WIDTH: u32 = 1920;
pub const DEFAULT_MAX_HEIGHT: u32 = 1080;
/// The largest box a caller may ask for; bigger outputs are not web images.
pub const MAX_BOX_SIDE: u32 = 8192;

/// Options after validation: every value is in range and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub text: String,
    pub position: Position,
    /// Text opacity in (0, 1].
    pub opacity: f32,
    pub tiled: bool,
    pub resize_filter: ResizeFilter,
    /// `Unspecified` is resolved once the image is decoded, from `accept`.
    pub format: ImageFormat,
    /// The caller's HTTP Accept values, for an unspecified format.
    pub accept: Vec<String>,
    pub quality: u8,
    /// Progressive JPEG (ignored by other formats).
    pub progressive: bool,
    /// Copy the source's EXIF (JPEG to JPEG only).
    pub keep_metadata: bool,
    pub max_width: u32,
    pub max_height: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            text: DEFAULT_TEXT.to_owned(),
            position: Position::BottomRight,
            opacity: DEFAULT_OPACITY,
            tiled: false,
            resize_filter: ResizeFilter::Lanczos3,
            format: ImageFormat::Unspecified,
            accept: Vec::new(),
            quality: DEFAULT_QUALITY,
            progressive: false,
            keep_metadata: false,
            max_width: DEFAULT_MAX_WIDTH,
            max_height: DEFAULT_MAX_HEIGHT,
        }
    }
}

impl TryFrom<OptimizeOptions> for Options {
    type Error = OptimizeError;

    fn try_from(wire: OptimizeOptions) -> Result<Self, Self::Error> {
        let bad = |message: String| OptimizeError::BadOptions(message);

        let text: String = wire.watermark_text.chars().filter(|c| !c.is_control()).collect();
        let text = text.trim();
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(bad(format!(
                "watermark_text has {} characters; at most {MAX_TEXT_CHARS} are allowed",
                text.chars().count()
            )));
        }

        let position = match Position::try_from(wire.position) {
            Ok(Position::Unspecified) => Position::BottomRight,
            Ok(position) => position,
            Err(_) => return Err(bad(format!("position {} is not a known Position", wire.position))),
        };

        let opacity = if wire.opacity == 0.0 {
            DEFAULT_OPACITY
        } else if wire.opacity > 0.0 && wire.opacity <= 1.0 {
            wire.opacity
        } else {
            return Err(bad(format!(
                "opacity {} is out of range: use more than 0 up to 1, or 0 for the default",
                wire.opacity
            )));
        };

        let resize_filter = match ResizeFilter::try_from(wire.resize_filter) {
            Ok(ResizeFilter::Unspecified) => ResizeFilter::Lanczos3,
            Ok(filter) => filter,
            Err(_) => {
                return Err(bad(format!(
                    "resize_filter {} is not a known ResizeFilter",
                    wire.resize_filter
                )));
            }
        };

        let format = match ImageFormat::try_from(wire.format) {
            Ok(ImageFormat::Gif) => {
                return Err(bad("GIF is accepted as input but not offered as output".into()));
            }
            Ok(format) => format,
            Err(_) => return Err(bad(format!("format {} is not a known ImageFormat", wire.format))),
        };

        let quality = match wire.quality {
            0 => DEFAULT_QUALITY,
            q @ 1..=100 => q as u8,
            q => {
                return Err(bad(format!(
                    "quality {q} is out of range: use 1 to 100, or 0 for the default"
                )));
            }
        };

        let side = |value: u32, default: u32, name: &str| match value {
            0 => Ok(default),
            v if v <= MAX_BOX_SIDE => Ok(v),
            v => Err(bad(format!(
                "{name} {v} is over the {MAX_BOX_SIDE}-pixel maximum"
            ))),
        };

        Ok(Self {
            text: if text.is_empty() {
                DEFAULT_TEXT.to_owned()
            } else {
                text.to_owned()
            },
            position,
            opacity,
            tiled: wire.tiled,
            resize_filter,
            format,
            accept: wire.accept,
            quality,
            progressive: wire.progressive,
            keep_metadata: wire.keep_metadata,
            max_width: side(wire.max_width, DEFAULT_MAX_WIDTH, "max_width")?,
            max_height: side(wire.max_height, DEFAULT_MAX_HEIGHT, "max_height")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_mean_defaults() {
        assert_eq!(
            Options::try_from(OptimizeOptions::default()).unwrap(),
            Options::default()
        );
    }

    #[test]
    fn out_of_range_values_are_named() {
        let cases = [
            (
                OptimizeOptions {
                    quality: 101,
                    ..Default::default()
                },
                "quality 101",
            ),
            (
                OptimizeOptions {
                    position: 42,
                    ..Default::default()
                },
                "position 42",
            ),
            (
                OptimizeOptions {
                    format: ImageFormat::Gif as i32,
                    ..Default::default()
                },
                "GIF",
            ),
            (
                OptimizeOptions {
                    max_width: 100_000,
                    ..Default::default()
                },
                "max_width",
            ),
            (
                OptimizeOptions {
                    watermark_text: "x".repeat(201),
                    ..Default::default()
                },
                "watermark_text",
            ),
        ];
        for (wire, expected) in cases {
            let message = Options::try_from(wire).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn control_characters_are_dropped() {
        let wire = OptimizeOptions {
            watermark_text: "a\u{0}b\nc".into(),
            ..Default::default()
        };
        assert_eq!(Options::try_from(wire).unwrap().text, "abc");
    }
}
