//! Processing options, validated once from the wire form, and their
//! canonical form. The optimizer runs what [`Options`] says; the gateway
//! checks the same rules before it accepts an upload and derives cache keys
//! from [`Options::canonical`], so both agree on what "the same request"
//! means.

use prost::Message as _;

use crate::{
    media,
    pb::{Animation, Font, ImageFormat, OptimizeOptions, Position, ResizeFilter},
};

/// Version of the pixels the pipeline produces for given options. Bump it
/// whenever a change alters output bytes (codec settings, the font, the
/// resampler, the ink rule): it is part of every cache key, so an upgrade
/// never serves renders made by the old pipeline.
pub const PIPELINE_VERSION: &str = "2026-11-30.1";

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
/// Lines of text a mark may have.
pub const MAX_TEXT_LINES: usize = 8;
pub const DEFAULT_QUALITY: u8 = 85;
pub const DEFAULT_MAX_WIDTH: u32 = 1920;
pub const DEFAULT_MAX_HEIGHT: u32 = 1080;
/// The largest box a caller may ask for; bigger outputs are not web images.
pub const MAX_BOX_SIDE: u32 = 8192;
/// Text height relative to the output height when the caller does not
/// choose one.
pub const DEFAULT_TEXT_SIZE: f32 = 0.04;
/// The largest text height: half the output.
pub const MAX_TEXT_SIZE: f32 = 0.5;
/// Width of an image mark relative to the output width by default.
pub const DEFAULT_IMAGE_SCALE: f32 = 0.2;
/// The largest image mark (a logo), so one can never cost what a photo
/// does: refused from its size and header before it is decoded.
pub const MAX_MARK_IMAGE_BYTES: u64 = 8 << 20;
pub const MAX_MARK_IMAGE_SIDE: u32 = 4096;
pub const MAX_MARK_IMAGE_PIXELS: u64 = 4_000_000;

/// Options after validation: every value is in range and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The text of the mark, lines separated by `\n`; empty only when the
    /// mark is an image alone.
    pub text: String,
    pub position: Position,
    /// Opacity of the mark in (0, 1].
    pub opacity: f32,
    pub tiled: bool,
    /// Shift from the anchor: pixels when |value| >= 1, else a fraction of
    /// the output's width (x) or height (y).
    pub offset_x: f32,
    pub offset_y: f32,
    /// Degrees clockwise, in (-180, 180].
    pub rotate: f32,
    /// Gap between tiles: 0 for the default, pixels when >= 1, else a
    /// fraction of the output width.
    pub spacing: f32,
    /// A fixed ink (RGBA) instead of the adaptive one.
    pub color: Option<[u8; 4]>,
    /// Text height as a fraction of the output height, in (0, 0.5].
    pub text_size: f32,
    pub font: Font,
    /// The image mark: the SHA-256 (lowercase hex) of an original in Storage.
    pub image_sha256: Option<String>,
    /// Width of the image mark as a fraction of the output width, in (0, 1].
    pub image_scale: f32,
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
    /// First frame only, or every frame (the output is then WebP).
    pub animated: Animation,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            text: DEFAULT_TEXT.to_owned(),
            position: Position::BottomRight,
            opacity: DEFAULT_OPACITY,
            tiled: false,
            offset_x: 0.0,
            offset_y: 0.0,
            rotate: 0.0,
            spacing: 0.0,
            color: None,
            text_size: DEFAULT_TEXT_SIZE,
            font: Font::Sans,
            image_sha256: None,
            image_scale: DEFAULT_IMAGE_SCALE,
            resize_filter: ResizeFilter::Lanczos3,
            format: ImageFormat::Unspecified,
            accept: Vec::new(),
            quality: DEFAULT_QUALITY,
            progressive: false,
            keep_metadata: false,
            max_width: DEFAULT_MAX_WIDTH,
            max_height: DEFAULT_MAX_HEIGHT,
            animated: Animation::First,
        }
    }
}

impl TryFrom<OptimizeOptions> for Options {
    type Error = BadOptions;

    fn try_from(wire: OptimizeOptions) -> Result<Self, Self::Error> {
        let bad = BadOptions;

        let image_sha256 = match wire.image_sha256.trim() {
            "" => None,
            hash => Some(sha256_hex(hash).ok_or_else(|| {
                bad(format!(
                    "image_sha256 {hash:?} is not a SHA-256: use 64 hexadecimal characters"
                ))
            })?),
        };
        let text = mark_text(&wire.watermark_text)?;

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

        let side_limit = MAX_BOX_SIDE as f32;
        for (name, value) in [("offset_x", wire.offset_x), ("offset_y", wire.offset_y)] {
            // NaN is out of range too.
            let in_range = value.abs() <= side_limit;
            if !in_range {
                return Err(bad(format!(
                    "{name} {value} is out of range: use -{MAX_BOX_SIDE} to {MAX_BOX_SIDE} pixels, or a fraction of the output between -1 and 1"
                )));
            }
        }
        let turn_in_range = wire.rotate.abs() <= 360.0;
        if !turn_in_range {
            return Err(bad(format!(
                "rotate {} is out of range: use -360 to 360 degrees",
                wire.rotate
            )));
        }
        if !(0.0..=side_limit).contains(&wire.spacing) {
            return Err(bad(format!(
                "spacing {} is out of range: use 0 (the default) to {MAX_BOX_SIDE} pixels, or a fraction of the output width below 1",
                wire.spacing
            )));
        }
        let color = match wire.color.trim() {
            "" => None,
            given => Some(parse_color(given).ok_or_else(|| {
                bad(format!(
                    "color {given:?} is not a colour: use #rrggbb or #rrggbbaa (hexadecimal), or #rgb / #rgba"
                ))
            })?),
        };
        let text_size = fraction(wire.text_size, DEFAULT_TEXT_SIZE, MAX_TEXT_SIZE)
            .ok_or_else(|| bad(format!(
                "text_size {} is out of range: use more than 0 up to {MAX_TEXT_SIZE} (of the output height), or 0 for the default",
                wire.text_size
            )))?;
        let image_scale = fraction(wire.image_scale, DEFAULT_IMAGE_SCALE, 1.0).ok_or_else(|| {
            bad(format!(
                "image_scale {} is out of range: use more than 0 up to 1 (of the output width), or 0 for the default",
                wire.image_scale
            ))
        })?;
        let font = match Font::try_from(wire.font) {
            Ok(Font::Unspecified) => Font::Sans,
            Ok(font) => font,
            Err(_) => return Err(bad(format!("font {} is not a known Font", wire.font))),
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
            Ok(format) if media::is_output(format) || format == ImageFormat::Unspecified => format,
            Ok(format) => {
                return Err(bad(format!(
                    "{} is accepted as input but not offered as output",
                    media::name(format)
                )));
            }
            Err(_) => return Err(bad(format!("format {} is not a known ImageFormat", wire.format))),
        };
        let animated = match Animation::try_from(wire.animated) {
            Ok(Animation::Unspecified | Animation::First) => Animation::First,
            Ok(Animation::Keep) => Animation::Keep,
            Err(_) => {
                return Err(bad(format!(
                    "animated {} is not a known Animation",
                    wire.animated
                )));
            }
        };
        // Frames need a format that holds them: WebP is the one here. It is
        // settled now, not from the image, so a cache key never depends on
        // whether the original turns out to be animated.
        let format = match (animated, format) {
            (Animation::Keep, ImageFormat::Unspecified | ImageFormat::Webp) => ImageFormat::Webp,
            (Animation::Keep, other) => {
                return Err(bad(format!(
                    "animated=keep writes WebP, the one output format here that holds frames; {} cannot: leave the format unset or ask for WebP",
                    media::name(other)
                )));
            }
            (Animation::First | Animation::Unspecified, format) => format,
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
            text: match (text.is_empty(), &image_sha256) {
                (true, None) => DEFAULT_TEXT.to_owned(),
                _ => text,
            },
            position,
            opacity,
            tiled: wire.tiled,
            offset_x: wire.offset_x,
            offset_y: wire.offset_y,
            rotate: normalized_degrees(wire.rotate),
            spacing: wire.spacing,
            color,
            text_size,
            font,
            image_sha256,
            image_scale,
            resize_filter,
            format,
            accept: wire.accept,
            quality,
            progressive: wire.progressive,
            keep_metadata: wire.keep_metadata,
            max_width: side(wire.max_width, DEFAULT_MAX_WIDTH, "max_width")?,
            max_height: side(wire.max_height, DEFAULT_MAX_HEIGHT, "max_height")?,
            animated,
        })
    }
}

/// The text as drawn: line breaks kept (`\r\n` and `\r` become `\n`),
/// other control characters dropped, blank lines at either end trimmed.
fn mark_text(given: &str) -> Result<String, BadOptions> {
    let unified = given.replace("\r\n", "\n").replace('\r', "\n");
    let kept: String = unified
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let text = kept.trim();
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(BadOptions(format!(
            "watermark_text has {chars} characters; at most {MAX_TEXT_CHARS} are allowed"
        )));
    }
    let lines = text.lines().count();
    if lines > MAX_TEXT_LINES {
        return Err(BadOptions(format!(
            "watermark_text has {lines} lines; at most {MAX_TEXT_LINES} are allowed"
        )));
    }
    Ok(text.to_owned())
}

/// A value in (0, `max`], or the default for 0; `None` when out of range.
fn fraction(value: f32, default: f32, max: f32) -> Option<f32> {
    match value {
        0.0 => Some(default),
        v if v > 0.0 && v <= max => Some(v),
        _ => None,
    }
}

/// The same turn in (-180, 180], so equivalent rotations share a key.
fn normalized_degrees(degrees: f32) -> f32 {
    let turned = degrees.rem_euclid(360.0);
    if turned > 180.0 { turned - 360.0 } else { turned }
}

/// 64 hexadecimal characters, lowercased.
fn sha256_hex(given: &str) -> Option<String> {
    (given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit())).then(|| given.to_ascii_lowercase())
}

/// `#rgb`, `#rgba`, `#rrggbb` or `#rrggbbaa`, the `#` optional.
pub fn parse_color(given: &str) -> Option<[u8; 4]> {
    let hex = given.strip_prefix('#').unwrap_or(given);
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let nibble = |i: usize| u8::from_str_radix(&hex[i..=i], 16).ok();
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    match hex.len() {
        3 | 4 => {
            let mut rgba = [255u8; 4];
            for (i, channel) in rgba.iter_mut().enumerate().take(hex.len()) {
                *channel = nibble(i)? * 17;
            }
            Some(rgba)
        }
        6 | 8 => {
            let mut rgba = [255u8; 4];
            for (i, channel) in rgba.iter_mut().enumerate().take(hex.len() / 2) {
                *channel = byte(2 * i)?;
            }
            Some(rgba)
        }
        _ => None,
    }
}

/// The colour as the canonical form writes it: `#rrggbbaa`.
pub fn color_hex([r, g, b, a]: [u8; 4]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}{a:02x}")
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

    /// Whether the mark has text (it may be an image alone).
    pub fn has_text(&self) -> bool {
        !self.text.is_empty()
    }

    /// The options as a deterministic byte string: defaults written out,
    /// the format negotiated, and settings that cannot change the output
    /// zeroed. Two requests with equal canonical bytes get identical images
    /// from the same pipeline version.
    pub fn canonical(&self) -> Vec<u8> {
        let negotiated = self.clone().negotiate();
        let may_be_jpeg = matches!(negotiated.format, ImageFormat::Jpeg | ImageFormat::Unspecified);
        let has_text = negotiated.has_text();
        let mut wire = negotiated.to_wire();
        wire.progressive &= may_be_jpeg;
        wire.keep_metadata &= may_be_jpeg;
        if !wire.tiled {
            wire.spacing = 0.0;
        }
        if !has_text {
            wire.color.clear();
            wire.text_size = 0.0;
            wire.font = 0;
        }
        if wire.image_sha256.is_empty() {
            wire.image_scale = 0.0;
        }
        // The default is left unwritten, so the keys of every request made
        // before the option existed stay what they were.
        if negotiated.animated == Animation::First {
            wire.animated = Animation::Unspecified as i32;
        }
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
            offset_x: self.offset_x,
            offset_y: self.offset_y,
            rotate: self.rotate,
            spacing: self.spacing,
            color: self.color.map(color_hex).unwrap_or_default(),
            text_size: self.text_size,
            font: self.font as i32,
            image_sha256: self.image_sha256.clone().unwrap_or_default(),
            image_scale: self.image_scale,
            animated: self.animated as i32,
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
            text: "mine\nsecond line".into(),
            position: Position::Left,
            opacity: 0.5,
            tiled: true,
            offset_x: -12.0,
            offset_y: 0.25,
            rotate: -30.0,
            spacing: 40.0,
            color: Some([0x12, 0x34, 0x56, 0x80]),
            text_size: 0.1,
            font: Font::Serif,
            image_sha256: Some("ab".repeat(32)),
            image_scale: 0.5,
            resize_filter: ResizeFilter::Fast,
            format: ImageFormat::Png,
            accept: accept("image/webp"),
            quality: 42,
            progressive: true,
            keep_metadata: true,
            max_width: 640,
            max_height: 480,
            animated: Animation::First,
        };
        assert_eq!(Options::try_from(chosen.to_wire()).unwrap(), chosen);
        let animated = Options {
            animated: Animation::Keep,
            format: ImageFormat::Webp,
            ..chosen
        };
        assert_eq!(Options::try_from(animated.to_wire()).unwrap(), animated);
    }

    #[test]
    fn keeping_frames_means_webp_and_counts_in_the_key() {
        let keep = |format: ImageFormat| {
            options(OptimizeOptions {
                animated: Animation::Keep as i32,
                format: format as i32,
                accept: accept("image/avif"),
                ..Default::default()
            })
        };
        let unset = keep(ImageFormat::Unspecified).unwrap();
        assert_eq!(
            unset.format,
            ImageFormat::Webp,
            "settled at once, whatever Accept says"
        );
        assert!(!unset.format_follows_accept());
        assert_eq!(unset, keep(ImageFormat::Webp).unwrap());
        for other in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Avif] {
            let message = keep(other).unwrap_err().0;
            assert!(message.starts_with("animated=keep writes WebP"), "{message}");
            assert!(message.contains(media::name(other)), "{message}");
        }
        let unknown = options(OptimizeOptions {
            animated: 7,
            ..Default::default()
        })
        .unwrap_err()
        .0;
        assert_eq!(unknown, "animated 7 is not a known Animation");

        let key = |animated: Animation| {
            options(OptimizeOptions {
                animated: animated as i32,
                format: ImageFormat::Webp as i32,
                ..Default::default()
            })
            .unwrap()
            .canonical()
        };
        assert_eq!(key(Animation::First), key(Animation::Unspecified));
        assert_ne!(key(Animation::First), key(Animation::Keep));
        // The default is not written, so keys made before it existed hold.
        let wire = OptimizeOptions::decode(key(Animation::First).as_slice()).unwrap();
        assert_eq!(wire.animated, 0);
    }

    #[test]
    fn line_breaks_are_kept_and_other_control_characters_dropped() {
        let wire = OptimizeOptions {
            watermark_text: "a\u{0}b\r\nc\rd\t".into(),
            ..Default::default()
        };
        assert_eq!(Options::try_from(wire).unwrap().text, "ab\nc\nd");
        let wire = OptimizeOptions {
            watermark_text: "l\n".repeat(MAX_TEXT_LINES + 1),
            ..Default::default()
        };
        assert_eq!(
            options(wire).unwrap_err().0,
            "watermark_text has 9 lines; at most 8 are allowed"
        );
    }

    #[test]
    fn an_image_mark_has_no_default_text() {
        let hash = "AB".repeat(32);
        let logo_only = options(OptimizeOptions {
            image_sha256: hash.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(logo_only.image_sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(!logo_only.has_text());
        assert_eq!(Options::try_from(logo_only.to_wire()).unwrap(), logo_only);
        let both = options(OptimizeOptions {
            image_sha256: hash,
            watermark_text: "© me".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(both.text, "© me");
        for refused in ["abc", &"g".repeat(64), &"a".repeat(65)] {
            let message = options(OptimizeOptions {
                image_sha256: refused.to_owned(),
                ..Default::default()
            })
            .unwrap_err()
            .0;
            assert!(message.starts_with("image_sha256"), "{message}");
        }
    }

    #[test]
    fn colours_are_hex_with_optional_alpha_and_written_in_full() {
        for (given, rgba) in [
            ("#ff8000", [255, 128, 0, 255]),
            ("FF800080", [255, 128, 0, 128]),
            ("#f80", [255, 136, 0, 255]),
            ("#f808", [255, 136, 0, 136]),
        ] {
            assert_eq!(parse_color(given), Some(rgba), "{given}");
            let chosen = options(OptimizeOptions {
                color: given.into(),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(chosen.color, Some(rgba));
            assert_eq!(chosen.to_wire().color, color_hex(rgba));
        }
        for refused in ["red", "#12345", "#ggg", "#1234567890"] {
            let message = options(OptimizeOptions {
                color: refused.into(),
                ..Default::default()
            })
            .unwrap_err()
            .0;
            assert!(message.starts_with(&format!("color {refused:?}")), "{message}");
        }
    }

    #[test]
    fn placement_values_are_bounded() {
        for (wire, name) in [
            (
                OptimizeOptions {
                    offset_x: 9000.0,
                    ..Default::default()
                },
                "offset_x 9000",
            ),
            (
                OptimizeOptions {
                    offset_y: f32::NAN,
                    ..Default::default()
                },
                "offset_y NaN",
            ),
            (
                OptimizeOptions {
                    rotate: 361.0,
                    ..Default::default()
                },
                "rotate 361",
            ),
            (
                OptimizeOptions {
                    spacing: -1.0,
                    ..Default::default()
                },
                "spacing -1",
            ),
            (
                OptimizeOptions {
                    text_size: 0.6,
                    ..Default::default()
                },
                "text_size 0.6",
            ),
            (
                OptimizeOptions {
                    image_scale: 1.5,
                    ..Default::default()
                },
                "image_scale 1.5",
            ),
            (
                OptimizeOptions {
                    font: 99,
                    ..Default::default()
                },
                "font 99",
            ),
            (
                OptimizeOptions {
                    format: ImageFormat::Gif as i32,
                    ..Default::default()
                },
                "GIF is accepted as input but not offered as output",
            ),
        ] {
            let message = options(wire).unwrap_err().0;
            assert!(message.starts_with(name), "{message}");
        }
    }

    #[test]
    fn equivalent_marks_share_a_key_and_settings_that_draw_nothing_do_not_count() {
        let key = |wire: OptimizeOptions| options(wire).unwrap().canonical();
        // The same turn.
        assert_eq!(
            key(OptimizeOptions {
                rotate: 330.0,
                ..Default::default()
            }),
            key(OptimizeOptions {
                rotate: -30.0,
                ..Default::default()
            })
        );
        // Spacing matters only to a tiled mark.
        assert_eq!(
            key(OptimizeOptions {
                spacing: 50.0,
                ..Default::default()
            }),
            key(OptimizeOptions::default())
        );
        assert_ne!(
            key(OptimizeOptions {
                spacing: 50.0,
                tiled: true,
                ..Default::default()
            }),
            key(OptimizeOptions {
                tiled: true,
                ..Default::default()
            })
        );
        // Text settings matter only when there is text.
        let logo = "ab".repeat(32);
        assert_eq!(
            key(OptimizeOptions {
                image_sha256: logo.clone(),
                font: Font::Mono as i32,
                color: "#fff".into(),
                ..Default::default()
            }),
            key(OptimizeOptions {
                image_sha256: logo.clone(),
                ..Default::default()
            })
        );
        // The image scale only when there is an image.
        assert_eq!(
            key(OptimizeOptions {
                image_scale: 0.5,
                ..Default::default()
            }),
            key(OptimizeOptions::default())
        );
        assert_ne!(
            key(OptimizeOptions {
                image_sha256: logo.clone(),
                image_scale: 0.5,
                ..Default::default()
            }),
            key(OptimizeOptions {
                image_sha256: logo,
                ..Default::default()
            })
        );
        // Defaults spelled out are the defaults.
        assert_eq!(
            key(OptimizeOptions {
                font: Font::Sans as i32,
                text_size: DEFAULT_TEXT_SIZE,
                ..Default::default()
            }),
            key(OptimizeOptions::default())
        );
    }
}
