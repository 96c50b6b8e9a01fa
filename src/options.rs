//! Processing options, validated once from the wire form, and their
//! canonical form. The optimizer runs what [`Options`] says; the gateway
//! checks the same rules before it accepts an upload and derives cache keys
//! from [`Options::canonical`], so both agree on what "the same request"
//! means.

use prost::Message as _;

use crate::{
    media,
    pb::{ImageFormat, OptimizeOptions, Position, ResizeFilter},
};

/// Version of the pixels the pipeline produces for given options. Bump it
/// whenever a change alters output bytes (codec settings, the font, the
/// resampler, the ink rule): it is part of every cache key, so an upgrade
/// never serves renders made by the old pipeline.
pub const PIPELINE_VERSION: &str = "2026-11-29.1";

/// Opacity of the text when the caller does not choose one.
pub const DEFAULT_OPACITY: f32 = 0.85;

/// Options that break a rule, with a message naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOptions(pub String);

impl std::fmt::Display for BadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadOptions {}

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
    /// Copy the source's EXIF (JPEG, PNG or WebP to JPEG only).
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
    type Error = BadOptions;

    fn try_from(wire: OptimizeOptions) -> Result<Self, Self::Error> {
        let bad = BadOptions;

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

impl Options {
    /// Settles an unspecified format from `accept`: AVIF, else WebP, when
    /// the caller names it with a non-zero q. What stays unspecified is
    /// decided by the image alone (PNG when it has transparency, else JPEG),
    /// so it is as fixed as an explicit format for a given original.
    pub fn negotiate(mut self) -> Self {
        if self.format == ImageFormat::Unspecified {
            self.format = preferred_by_accept(&self.accept).unwrap_or(ImageFormat::Unspecified);
        }
        self.accept.clear();
        self
    }

    /// Whether [`Options::negotiate`] has anything to decide: the format is
    /// chosen from the caller's Accept, so responses vary with it.
    pub fn format_follows_accept(&self) -> bool {
        self.format == ImageFormat::Unspecified
    }

    /// The same options with the output format settled: `Unspecified` now
    /// means decided by the image alone (PNG when it has transparency, else
    /// JPEG), whatever the caller accepts.
    pub fn with_format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self.accept.clear();
        self
    }

    /// The options as a deterministic byte string: defaults written out,
    /// the format negotiated, and settings that cannot change the output
    /// zeroed. Two requests with equal canonical bytes get identical images
    /// from the same pipeline version.
    pub fn canonical(&self) -> Vec<u8> {
        let negotiated = self.clone().negotiate();
        let may_be_jpeg = matches!(negotiated.format, ImageFormat::Jpeg | ImageFormat::Unspecified);
        let mut wire = negotiated.to_wire();
        wire.progressive &= may_be_jpeg;
        wire.keep_metadata &= may_be_jpeg;
        wire.encode_to_vec()
    }

    /// The wire form, for sending these options on (the stream's
    /// `input_size` is the sender's to add).
    pub fn to_wire(&self) -> OptimizeOptions {
        OptimizeOptions {
            watermark_text: self.text.clone(),
            position: self.position as i32,
            format: self.format as i32,
            quality: u32::from(self.quality),
            max_width: self.max_width,
            max_height: self.max_height,
            progressive: self.progressive,
            accept: self.accept.clone(),
            opacity: self.opacity,
            tiled: self.tiled,
            resize_filter: self.resize_filter as i32,
            keep_metadata: self.keep_metadata,
            input_size: 0,
        }
    }
}

/// The best modern format the Accept values name with a non-zero q: AVIF,
/// then WebP. Wildcards do not count: `*/*` is sent by clients that cannot
/// show AVIF or WebP.
pub fn preferred_by_accept(accept: &[String]) -> Option<ImageFormat> {
    [ImageFormat::Avif, ImageFormat::Webp]
        .into_iter()
        .find(|format| accepts(accept, media::media_type(*format)))
}

fn accepts(accept: &[String], media_type: &str) -> bool {
    accept
        .iter()
        .flat_map(|value| value.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next()?;
            let q = parts
                .filter_map(|param| param.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((name, q))
        })
        .any(|(name, q)| name.eq_ignore_ascii_case(media_type) && q > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Vec<String> {
        vec![value.to_owned()]
    }

    #[test]
    fn accept_prefers_avif_then_webp_and_ignores_wildcards() {
        let chrome = accept("image/avif,image/webp,image/apng,image/*,*/*;q=0.8");
        assert_eq!(preferred_by_accept(&chrome), Some(ImageFormat::Avif));
        assert_eq!(
            preferred_by_accept(&accept("image/webp,*/*")),
            Some(ImageFormat::Webp)
        );
        assert_eq!(
            preferred_by_accept(&accept("image/avif;q=0, image/webp;q=0.5")),
            Some(ImageFormat::Webp)
        );
        assert_eq!(preferred_by_accept(&accept("image/*,*/*;q=0.8")), None);
        assert_eq!(preferred_by_accept(&[]), None);
    }

    #[test]
    fn equivalent_requests_share_canonical_bytes() {
        let defaults = Options::try_from(OptimizeOptions::default()).unwrap();
        let spelled_out = Options::try_from(OptimizeOptions {
            watermark_text: "  NWS Watermark ".into(),
            position: Position::BottomRight as i32,
            quality: 85,
            max_width: 1920,
            max_height: 1080,
            opacity: DEFAULT_OPACITY,
            resize_filter: ResizeFilter::Lanczos3 as i32,
            accept: accept("text/html,*/*"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(defaults.canonical(), spelled_out.canonical());

        let webp_by_accept = Options::try_from(OptimizeOptions {
            accept: accept("image/webp"),
            progressive: true,
            ..Default::default()
        })
        .unwrap();
        let webp_named = Options::try_from(OptimizeOptions {
            format: ImageFormat::Webp as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(webp_by_accept.canonical(), webp_named.canonical());
        assert_ne!(defaults.canonical(), webp_named.canonical());

        let other_text = Options::try_from(OptimizeOptions {
            watermark_text: "other".into(),
            ..Default::default()
        })
        .unwrap();
        assert_ne!(defaults.canonical(), other_text.canonical());
    }

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

    fn options(wire: OptimizeOptions) -> Result<Options, BadOptions> {
        Options::try_from(wire)
    }

    #[test]
    fn text_length_is_counted_in_characters_up_to_the_maximum() {
        let longest = "é".repeat(MAX_TEXT_CHARS);
        let wire = OptimizeOptions {
            watermark_text: longest.clone(),
            ..Default::default()
        };
        assert_eq!(options(wire).unwrap().text, longest);
        let wire = OptimizeOptions {
            watermark_text: "é".repeat(MAX_TEXT_CHARS + 1),
            ..Default::default()
        };
        assert_eq!(
            options(wire).unwrap_err().0,
            "watermark_text has 201 characters; at most 200 are allowed"
        );
    }

    #[test]
    fn opacity_is_more_than_zero_up_to_one_and_zero_means_the_default() {
        for (given, kept) in [
            (0.0, DEFAULT_OPACITY),
            (0.5, 0.5),
            (1.0, 1.0),
            (f32::MIN_POSITIVE, f32::MIN_POSITIVE),
        ] {
            let wire = OptimizeOptions {
                opacity: given,
                ..Default::default()
            };
            assert_eq!(options(wire).unwrap().opacity, kept, "{given}");
        }
        for refused in [1.01, 1.5, -0.5, f32::NAN] {
            let wire = OptimizeOptions {
                opacity: refused,
                ..Default::default()
            };
            let message = options(wire).unwrap_err().0;
            assert!(
                message.starts_with(&format!("opacity {refused} is out of range")),
                "{message}"
            );
        }
    }

    #[test]
    fn the_box_is_at_most_max_box_side_on_each_side() {
        let wire = OptimizeOptions {
            max_width: MAX_BOX_SIDE,
            max_height: MAX_BOX_SIDE,
            ..Default::default()
        };
        let largest = options(wire).unwrap();
        assert_eq!(
            (largest.max_width, largest.max_height),
            (MAX_BOX_SIDE, MAX_BOX_SIDE)
        );
        let small = options(OptimizeOptions {
            max_width: 1,
            max_height: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!((small.max_width, small.max_height), (1, 2));
        for (wire, name) in [
            (
                OptimizeOptions {
                    max_width: MAX_BOX_SIDE + 1,
                    ..Default::default()
                },
                "max_width",
            ),
            (
                OptimizeOptions {
                    max_height: MAX_BOX_SIDE + 1,
                    ..Default::default()
                },
                "max_height",
            ),
        ] {
            assert_eq!(
                options(wire).unwrap_err().0,
                format!("{name} 8193 is over the 8192-pixel maximum")
            );
        }
    }

    #[test]
    fn only_an_unspecified_format_follows_accept() {
        let auto = options(OptimizeOptions {
            accept: accept("image/avif"),
            ..Default::default()
        })
        .unwrap();
        assert!(auto.format_follows_accept());
        assert_eq!(auto.clone().negotiate().format, ImageFormat::Avif);
        assert!(auto.clone().negotiate().accept.is_empty());

        let named = options(OptimizeOptions {
            format: ImageFormat::Jpeg as i32,
            accept: accept("image/avif"),
            ..Default::default()
        })
        .unwrap();
        assert!(!named.format_follows_accept());
        assert_eq!(named.negotiate().format, ImageFormat::Jpeg);
    }

    #[test]
    fn with_format_settles_the_format_and_keeps_every_other_option() {
        let chosen = options(OptimizeOptions {
            watermark_text: "mine".into(),
            quality: 60,
            accept: accept("image/avif"),
            ..Default::default()
        })
        .unwrap();
        let settled = chosen.clone().with_format(ImageFormat::Webp);
        assert_eq!(
            settled,
            Options {
                format: ImageFormat::Webp,
                accept: Vec::new(),
                ..chosen
            }
        );
    }

    #[test]
    fn jpeg_only_settings_count_in_the_key_only_when_the_output_may_be_jpeg() {
        let canonical = |format: ImageFormat, progressive: bool, keep_metadata: bool| {
            options(OptimizeOptions {
                format: format as i32,
                progressive,
                keep_metadata,
                ..Default::default()
            })
            .unwrap()
            .canonical()
        };
        for format in [ImageFormat::Jpeg, ImageFormat::Unspecified] {
            let plain = canonical(format, false, false);
            assert_ne!(plain, canonical(format, true, false), "{format:?}");
            assert_ne!(plain, canonical(format, false, true), "{format:?}");
            assert_ne!(canonical(format, true, false), canonical(format, false, true));
        }
        for format in [ImageFormat::Png, ImageFormat::Webp, ImageFormat::Avif] {
            let plain = canonical(format, false, false);
            assert_eq!(plain, canonical(format, true, true), "{format:?}");
        }
        // The canonical form is the wire form, so a key can be explained.
        let wire = OptimizeOptions::decode(canonical(ImageFormat::Jpeg, false, true).as_slice()).unwrap();
        assert!(wire.keep_metadata && !wire.progressive);
        assert_eq!(wire.watermark_text, DEFAULT_TEXT);
    }

    #[test]
    fn the_wire_form_carries_every_option_back() {
        let chosen = Options {
            text: "mine".into(),
            position: Position::Center,
            opacity: 0.5,
            tiled: true,
            resize_filter: ResizeFilter::Fast,
            format: ImageFormat::Png,
            accept: accept("image/webp"),
            quality: 42,
            progressive: true,
            keep_metadata: true,
            max_width: 640,
            max_height: 480,
        };
        assert_eq!(Options::try_from(chosen.to_wire()).unwrap(), chosen);
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
