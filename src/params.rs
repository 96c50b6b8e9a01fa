//! The processing options as HTTP clients spell them: query parameters of a
//! raw upload, fields of a form. One table, [`PARAMS`], is read by the
//! parser, the error for an unknown name and the OpenAPI document, so a
//! name or a default is written once.
//!
//! Values are parsed here; the rules on them are [`Options`]' (shared with
//! the optimizer), and the documented ranges use the same constants.
//!
//! [`Options`]: crate::options::Options

use crate::{
    options::{
        BadOptions, DEFAULT_IMAGE_SCALE, DEFAULT_MAX_HEIGHT, DEFAULT_MAX_WIDTH, DEFAULT_OPACITY,
        DEFAULT_QUALITY, DEFAULT_TEXT, DEFAULT_TEXT_SIZE, MAX_BOX_SIDE, MAX_TEXT_CHARS, MAX_TEXT_SIZE,
    },
    pb::{Animation, Font, ImageFormat, OptimizeOptions, Position, ResizeFilter},
};

/// One option, by its HTTP name.
pub struct Param {
    pub name: &'static str,
    /// What it does, for documentation; the default is in [`Param::kind`].
    pub description: &'static str,
    pub kind: Kind,
    apply: fn(&mut OptimizeOptions, &str) -> Result<(), BadOptions>,
}

/// What values an option takes, and its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text {
        max_chars: usize,
        default: &'static str,
    },
    /// One of `values` (the canonical spellings; a few aliases are accepted).
    Choice {
        values: &'static [&'static str],
        default: &'static str,
    },
    Integer {
        min: u32,
        max: u32,
        default: u32,
    },
    /// A number in (0, `max`].
    Fraction {
        default: f32,
        max: f32,
    },
    /// A number in [`min`, `max`], fractional or not.
    Number {
        min: f32,
        max: f32,
        default: f32,
    },
    /// Text matching a regular expression (documented; the rule is
    /// [`Options`]').
    Pattern {
        pattern: &'static str,
    },
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`; empty means true).
    Flag,
}

pub const POSITIONS: &[&str] = &[
    "bottom-right",
    "bottom-left",
    "top-right",
    "top-left",
    "center",
    "top",
    "bottom",
    "left",
    "right",
];
pub const FONTS: &[&str] = &["sans", "serif", "mono"];
/// `wm_offset_x`/`_y` and `wm_spacing` in pixels (or a fraction below 1).
const MAX_SHIFT: f32 = MAX_BOX_SIDE as f32;
pub const FORMATS: &[&str] = &["auto", "avif", "webp", "jpeg", "png"];
pub const RESIZE_FILTERS: &[&str] = &["lanczos3", "fast"];
pub const ANIMATION_POLICIES: &[&str] = &["first", "keep"];

/// Every option an upload may carry.
pub const PARAMS: &[Param] = &[
    Param {
        name: "wm_text",
        description: "watermark text; control characters are removed",
        kind: Kind::Text {
            max_chars: MAX_TEXT_CHARS,
            default: DEFAULT_TEXT,
        },
        apply: |wire, value| {
            wire.watermark_text = value.to_owned();
            Ok(())
        },
    },
    Param {
        name: "wm_position",
        description: "where the watermark goes",
        kind: Kind::Choice {
            values: POSITIONS,
            default: "bottom-right",
        },
        apply: |wire, value| {
            wire.position = match normalized(value).replace('_', "-").as_str() {
                "top-left" => Position::TopLeft,
                "top-right" => Position::TopRight,
                "bottom-left" => Position::BottomLeft,
                "bottom-right" => Position::BottomRight,
                "center" | "centre" | "middle" => Position::Center,
                "top" | "top-center" | "top-centre" | "north" => Position::Top,
                "bottom" | "bottom-center" | "bottom-centre" | "south" => Position::Bottom,
                "left" | "center-left" | "centre-left" | "west" => Position::Left,
                "right" | "center-right" | "centre-right" | "east" => Position::Right,
                _ => return Err(not_one_of("wm_position", value, POSITIONS)),
            } as i32;
            Ok(())
        },
    },
    Param {
        name: "wm_opacity",
        description: "opacity of the watermark, text and image (the text's shadow follows)",
        kind: Kind::Fraction {
            default: DEFAULT_OPACITY,
            max: 1.0,
        },
        apply: |wire, value| {
            wire.opacity = number("wm_opacity", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_offset_x",
        description: "shift of the watermark from its anchor, to the right (negative: left); pixels, or a fraction of the output width when between -1 and 1",
        kind: Kind::Number {
            min: -MAX_SHIFT,
            max: MAX_SHIFT,
            default: 0.0,
        },
        apply: |wire, value| {
            wire.offset_x = number("wm_offset_x", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_offset_y",
        description: "shift of the watermark from its anchor, downwards (negative: up); pixels, or a fraction of the output height when between -1 and 1",
        kind: Kind::Number {
            min: -MAX_SHIFT,
            max: MAX_SHIFT,
            default: 0.0,
        },
        apply: |wire, value| {
            wire.offset_y = number("wm_offset_y", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_rotate",
        description: "rotation of the watermark in degrees, clockwise; -30 with wm_tiled is the usual diagonal anti-copy pattern",
        kind: Kind::Number {
            min: -360.0,
            max: 360.0,
            default: 0.0,
        },
        apply: |wire, value| {
            wire.rotate = number("wm_rotate", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_spacing",
        description: "gap between the repeats of a tiled watermark: pixels, or a fraction of the output width below 1; 0 is two text heights",
        kind: Kind::Number {
            min: 0.0,
            max: MAX_SHIFT,
            default: 0.0,
        },
        apply: |wire, value| {
            wire.spacing = number("wm_spacing", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_color",
        description: "ink of the text instead of the adaptive one: #rrggbb or #rrggbbaa (alpha multiplies wm_opacity); empty means adaptive",
        kind: Kind::Pattern {
            pattern: "^#?([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$",
        },
        apply: |wire, value| {
            wire.color = value.trim().to_owned();
            Ok(())
        },
    },
    Param {
        name: "wm_size",
        description: "text height as a fraction of the output height (long text shrinks to fit the width)",
        kind: Kind::Fraction {
            default: DEFAULT_TEXT_SIZE,
            max: MAX_TEXT_SIZE,
        },
        apply: |wire, value| {
            wire.text_size = number("wm_size", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_font",
        description: "typeface of the text (DejaVu Sans, Serif or Sans Mono Bold; CJK from Droid Sans Fallback)",
        kind: Kind::Choice {
            values: FONTS,
            default: "sans",
        },
        apply: |wire, value| {
            wire.font = match normalized(value).as_str() {
                "sans" | "sans-serif" => Font::Sans,
                "serif" => Font::Serif,
                "mono" | "monospace" => Font::Mono,
                _ => return Err(not_one_of("wm_font", value, FONTS)),
            } as i32;
            Ok(())
        },
    },
    Param {
        name: "wm_image_sha256",
        description: "an image drawn as (or above) the watermark text: the SHA-256 of an image already stored (an earlier upload's original, or the form part `wm_image`), at most 4096 pixels a side and 4 megapixels; with it, the text is drawn only when wm_text is given. `none`: no image, not even the server's default (NWS_WATERMARK_IMAGE)",
        kind: Kind::Pattern {
            pattern: "^([0-9a-fA-F]{64}|none)$",
        },
        apply: |wire, value| {
            wire.image_sha256 = value.trim().to_owned();
            Ok(())
        },
    },
    Param {
        name: "wm_scale",
        description: "width of the image watermark as a fraction of the output width",
        kind: Kind::Fraction {
            default: DEFAULT_IMAGE_SCALE,
            max: 1.0,
        },
        apply: |wire, value| {
            wire.image_scale = number("wm_scale", value)?;
            Ok(())
        },
    },
    Param {
        name: "wm_tiled",
        description: "repeat the text across the whole image",
        kind: Kind::Flag,
        apply: |wire, value| {
            wire.tiled = flag("wm_tiled", value)?;
            Ok(())
        },
    },
    Param {
        name: "format",
        description: "output format; auto answers at once with JPEG (PNG for transparent images) and makes the most compact format the request's Accept names (AVIF, else WebP) for later requests",
        kind: Kind::Choice {
            values: FORMATS,
            default: "auto",
        },
        apply: |wire, value| {
            wire.format = match normalized(value).as_str() {
                "auto" => ImageFormat::Unspecified,
                "jpeg" | "jpg" | "image/jpeg" => ImageFormat::Jpeg,
                "png" | "image/png" => ImageFormat::Png,
                "webp" | "image/webp" => ImageFormat::Webp,
                "avif" | "image/avif" => ImageFormat::Avif,
                _ => return Err(not_one_of("format", value, FORMATS)),
            } as i32;
            Ok(())
        },
    },
    Param {
        name: "quality",
        description: "encoder quality (JPEG, WebP, AVIF; PNG is lossless)",
        kind: Kind::Integer {
            min: 1,
            max: 100,
            default: DEFAULT_QUALITY as u32,
        },
        apply: |wire, value| {
            wire.quality = integer("quality", value)?;
            Ok(())
        },
    },
    Param {
        name: "progressive",
        description: "progressive JPEG",
        kind: Kind::Flag,
        apply: |wire, value| {
            wire.progressive = flag("progressive", value)?;
            Ok(())
        },
    },
    Param {
        name: "max_width",
        description: "width of the box the image is fitted into, keeping its aspect ratio; never enlarged",
        kind: Kind::Integer {
            min: 1,
            max: MAX_BOX_SIDE,
            default: DEFAULT_MAX_WIDTH,
        },
        apply: |wire, value| {
            wire.max_width = integer("max_width", value)?;
            Ok(())
        },
    },
    Param {
        name: "max_height",
        description: "height of the box the image is fitted into",
        kind: Kind::Integer {
            min: 1,
            max: MAX_BOX_SIDE,
            default: DEFAULT_MAX_HEIGHT,
        },
        apply: |wire, value| {
            wire.max_height = integer("max_height", value)?;
            Ok(())
        },
    },
    Param {
        name: "resize",
        description: "resampling filter: lanczos3 (sharp) or fast (bilinear)",
        kind: Kind::Choice {
            values: RESIZE_FILTERS,
            default: "lanczos3",
        },
        apply: |wire, value| {
            wire.resize_filter = match normalized(value).as_str() {
                "lanczos3" => ResizeFilter::Lanczos3,
                "fast" | "bilinear" => ResizeFilter::Fast,
                _ => return Err(not_one_of("resize", value, RESIZE_FILTERS)),
            } as i32;
            Ok(())
        },
    },
    Param {
        name: "keep_metadata",
        description: "keep the EXIF metadata, GPS included (JPEG, PNG or WebP into a JPEG output; orientation reset, thumbnail erased); XMP, IPTC and ICC always stripped",
        kind: Kind::Flag,
        apply: |wire, value| {
            wire.keep_metadata = flag("keep_metadata", value)?;
            Ok(())
        },
    },
    Param {
        name: "animated",
        description: "animated GIF or WebP: `first` keeps the first frame as a still image; `keep` resizes and watermarks every frame into an animated WebP (the output is then WebP, still images included), within the server's NWS_MAX_ANIMATION_PIXELS (frames × canvas pixels), checked before decoding",
        kind: Kind::Choice {
            values: ANIMATION_POLICIES,
            default: "first",
        },
        apply: |wire, value| {
            wire.animated = match normalized(value).as_str() {
                "first" | "still" => Animation::First,
                "keep" | "all" => Animation::Keep,
                _ => return Err(not_one_of("animated", value, ANIMATION_POLICIES)),
            } as i32;
            Ok(())
        },
    },
];

impl Param {
    /// Sets this option in `wire` from its text. An empty value leaves the
    /// default.
    pub fn apply(&self, wire: &mut OptimizeOptions, value: &str) -> Result<(), BadOptions> {
        if value.trim().is_empty() && !matches!(self.kind, Kind::Flag) {
            return Ok(());
        }
        (self.apply)(wire, value)
    }
}

/// The option called `name`, or an error naming the known ones (and the
/// closest, when the name looks like a typo of one).
pub fn find(name: &str) -> Result<&'static Param, BadOptions> {
    if let Some(param) = PARAMS.iter().find(|param| param.name == name) {
        return Ok(param);
    }
    let known: Vec<&str> = PARAMS.iter().map(|param| param.name).collect();
    let closest = PARAMS
        .iter()
        .map(|param| (edit_distance(name, param.name), param.name))
        .min()
        .filter(|(distance, _)| *distance <= 2)
        .map(|(_, closest)| format!(" (did you mean `{closest}`?)"))
        .unwrap_or_default();
    Err(BadOptions(format!(
        "unknown option `{name}`{closest}; the options are {}",
        known.join(", ")
    )))
}

fn normalized(value: &str) -> String {
    value.trim().to_ascii_lowercase()
}

fn not_one_of(name: &str, value: &str, values: &[&str]) -> BadOptions {
    BadOptions(format!("{name} {value:?} is not one of {}", values.join(", ")))
}

fn integer(name: &str, value: &str) -> Result<u32, BadOptions> {
    let Some(Kind::Integer { min, max, .. }) = PARAMS.iter().find(|p| p.name == name).map(|p| p.kind) else {
        unreachable!("{name} is an integer option");
    };
    let number: u32 = value
        .trim()
        .parse()
        .map_err(|_| BadOptions(format!("{name} {value:?} is not a whole number")))?;
    if !(min..=max).contains(&number) {
        return Err(BadOptions(format!(
            "{name} {number} is out of range: use {min} to {max}"
        )));
    }
    Ok(number)
}

/// A number within the option's documented range.
fn number(name: &str, value: &str) -> Result<f32, BadOptions> {
    let (min, max, above_min) = match PARAMS.iter().find(|p| p.name == name).map(|p| p.kind) {
        Some(Kind::Fraction { max, .. }) => (0.0, max, true),
        Some(Kind::Number { min, max, .. }) => (min, max, false),
        _ => unreachable!("{name} is a number option"),
    };
    let number: f32 = value
        .trim()
        .parse()
        .map_err(|_| BadOptions(format!("{name} {value:?} is not a number")))?;
    let in_range = if above_min {
        number > min && number <= max
    } else {
        (min..=max).contains(&number)
    };
    if !in_range {
        let from = if above_min {
            format!("more than {min}")
        } else {
            min.to_string()
        };
        return Err(BadOptions(format!(
            "{name} {value} is out of range: use {from} up to {max}",
            value = value.trim()
        )));
    }
    Ok(number)
}

fn flag(name: &str, value: &str) -> Result<bool, BadOptions> {
    match normalized(value).as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(BadOptions(format!("{name} {other:?} is not true or false"))),
    }
}

/// Levenshtein distance, for suggesting the option a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn set(wire: &mut OptimizeOptions, name: &str, value: &str) -> Result<(), BadOptions> {
        find(name)?.apply(wire, value)
    }

    #[test]
    fn option_text_parses_or_names_the_problem() {
        let mut wire = OptimizeOptions::default();
        set(&mut wire, "wm_position", "top_left").unwrap();
        set(&mut wire, "format", "JPG").unwrap();
        set(&mut wire, "quality", " 70 ").unwrap();
        set(&mut wire, "wm_tiled", "").unwrap();
        set(&mut wire, "max_width", "").unwrap();
        assert_eq!(wire.position, Position::TopLeft as i32);
        assert_eq!(wire.format, ImageFormat::Jpeg as i32);
        assert_eq!(wire.quality, 70);
        assert!(wire.tiled);
        assert_eq!(wire.max_width, 0, "empty means the default");
        for (name, value, expected) in [
            (
                "wm_position",
                "nowhere",
                "wm_position \"nowhere\" is not one of bottom-right",
            ),
            ("format", "bmp", "format \"bmp\""),
            ("quality", "high", "quality \"high\""),
            ("quality", "0", "quality 0 is out of range: use 1 to 100"),
            ("wm_opacity", "1.5", "wm_opacity 1.5"),
            ("wm_opacity", "0", "wm_opacity 0"),
            ("progressive", "maybe", "progressive \"maybe\""),
        ] {
            let message = set(&mut OptimizeOptions::default(), name, value).unwrap_err().0;
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones_and_a_suggestion() {
        let message = find("wm_positon").err().unwrap().0;
        assert!(
            message.starts_with("unknown option `wm_positon` (did you mean `wm_position`?)"),
            "{message}"
        );
        assert!(message.contains("wm_text, wm_position, wm_opacity"), "{message}");
        let message = find("colour").err().unwrap().0;
        assert!(!message.contains("did you mean"), "{message}");
    }

    #[test]
    fn documented_ranges_and_defaults_are_the_rules_options_enforce() {
        for param in PARAMS {
            match param.kind {
                Kind::Integer { min, max, default } => {
                    // The wire form, past the HTTP parser's own range check.
                    let options = |value: u32| {
                        let mut wire = OptimizeOptions::default();
                        match param.name {
                            "quality" => wire.quality = value,
                            "max_width" => wire.max_width = value,
                            "max_height" => wire.max_height = value,
                            other => panic!("{other}: add the new integer option here"),
                        }
                        Options::try_from(wire)
                    };
                    assert!(options(min).is_ok(), "{}", param.name);
                    assert!(options(max).is_ok(), "{}", param.name);
                    assert!(options(default).is_ok(), "{}", param.name);
                    assert!(options(max + 1).is_err(), "{}", param.name);
                    let mut wire = OptimizeOptions::default();
                    assert!(param.apply(&mut wire, &(max + 1).to_string()).is_err());
                    assert!(param.apply(&mut wire, &(min - 1).to_string()).is_err());
                }
                Kind::Choice { values, default } => {
                    assert!(values.contains(&default), "{}", param.name);
                    for value in values {
                        let mut wire = OptimizeOptions::default();
                        (param.apply)(&mut wire, value).unwrap();
                        assert!(Options::try_from(wire).is_ok(), "{} {value}", param.name);
                    }
                }
                Kind::Text { max_chars, .. } => {
                    let mut wire = OptimizeOptions::default();
                    (param.apply)(&mut wire, &"x".repeat(max_chars + 1)).unwrap();
                    assert!(Options::try_from(wire).is_err(), "{}", param.name);
                }
                Kind::Fraction { max, .. } => {
                    let mut wire = OptimizeOptions::default();
                    param.apply(&mut wire, &max.to_string()).unwrap();
                    assert!(Options::try_from(wire).is_ok(), "{}", param.name);
                    let mut wire = OptimizeOptions::default();
                    assert!(param.apply(&mut wire, &(max * 1.01).to_string()).is_err());
                    assert!(param.apply(&mut wire, "0").is_err(), "{}", param.name);
                }
                Kind::Number { min, max, default } => {
                    for value in [min, max, default] {
                        let mut wire = OptimizeOptions::default();
                        param.apply(&mut wire, &value.to_string()).unwrap();
                        assert!(Options::try_from(wire).is_ok(), "{} {value}", param.name);
                    }
                    let mut wire = OptimizeOptions::default();
                    assert!(param.apply(&mut wire, &(max + 1.0).to_string()).is_err());
                    assert!(param.apply(&mut wire, &(min - 1.0).to_string()).is_err());
                }
                Kind::Pattern { .. } => {
                    let mut wire = OptimizeOptions::default();
                    (param.apply)(&mut wire, "not valid!").unwrap();
                    assert!(Options::try_from(wire).is_err(), "{}", param.name);
                }
                Kind::Flag => {}
            }
        }
        let defaults = Options::default();
        assert_eq!(defaults.text, DEFAULT_TEXT);
        assert_eq!(defaults.opacity, DEFAULT_OPACITY);
        assert_eq!(
            (defaults.max_width, defaults.max_height),
            (DEFAULT_MAX_WIDTH, DEFAULT_MAX_HEIGHT)
        );
    }

    #[test]
    fn every_spelling_sets_its_wire_value() {
        let after = |name: &str, value: &str| {
            let mut wire = OptimizeOptions::default();
            set(&mut wire, name, value).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            wire
        };
        for (value, position) in [
            ("top-left", Position::TopLeft),
            ("Top_Right", Position::TopRight),
            ("bottom-left", Position::BottomLeft),
            ("bottom-right", Position::BottomRight),
            ("center", Position::Center),
            ("centre", Position::Center),
            ("top", Position::Top),
            ("bottom-center", Position::Bottom),
            ("left", Position::Left),
            ("centre-right", Position::Right),
        ] {
            assert_eq!(after("wm_position", value).position, position as i32, "{value}");
        }
        for (value, format) in [
            ("auto", ImageFormat::Unspecified),
            ("jpeg", ImageFormat::Jpeg),
            ("image/jpeg", ImageFormat::Jpeg),
            ("png", ImageFormat::Png),
            ("webp", ImageFormat::Webp),
            (" AVIF ", ImageFormat::Avif),
        ] {
            let mut wire = OptimizeOptions {
                format: ImageFormat::Png as i32,
                ..Default::default()
            };
            set(&mut wire, "format", value).unwrap();
            assert_eq!(wire.format, format as i32, "{value}");
        }
        for (value, filter) in [
            ("lanczos3", ResizeFilter::Lanczos3),
            ("fast", ResizeFilter::Fast),
            ("bilinear", ResizeFilter::Fast),
        ] {
            assert_eq!(after("resize", value).resize_filter, filter as i32, "{value}");
        }
        for (value, on) in [
            ("1", true),
            ("yes", true),
            ("ON", true),
            ("true", true),
            ("0", false),
            ("no", false),
            ("off", false),
            ("False", false),
        ] {
            let wire = after("keep_metadata", value);
            assert_eq!(wire.keep_metadata, on, "{value}");
            let wire = after("progressive", value);
            assert_eq!(wire.progressive, on, "{value}");
        }
        assert_eq!(after("wm_text", "mine").watermark_text, "mine");
        assert_eq!(after("wm_offset_x", "-0.1").offset_x, -0.1);
        assert_eq!(after("wm_offset_y", "24").offset_y, 24.0);
        assert_eq!(after("wm_rotate", "-30").rotate, -30.0);
        assert_eq!(after("wm_spacing", "0.05").spacing, 0.05);
        assert_eq!(after("wm_color", " #FF000080 ").color, "#FF000080");
        assert_eq!(after("wm_size", "0.1").text_size, 0.1);
        assert_eq!(after("wm_font", "Serif").font, Font::Serif as i32);
        assert_eq!(after("wm_font", "monospace").font, Font::Mono as i32);
        assert_eq!(after("wm_scale", "0.3").image_scale, 0.3);
        let hash = "ab".repeat(32);
        assert_eq!(after("wm_image_sha256", &hash).image_sha256, hash);
        assert_eq!(after("max_height", "480").max_height, 480);
        assert_eq!(after("animated", "keep").animated, Animation::Keep as i32);
        assert_eq!(after("animated", " First").animated, Animation::First as i32);
        let mut wire = OptimizeOptions::default();
        assert_eq!(
            set(&mut wire, "animated", "loop").unwrap_err().0,
            r#"animated "loop" is not one of first, keep"#
        );
    }

    #[test]
    fn opacity_is_more_than_zero_up_to_one() {
        for (value, opacity) in [("0.5", 0.5), (" 1 ", 1.0), ("0.01", 0.01)] {
            let mut wire = OptimizeOptions::default();
            set(&mut wire, "wm_opacity", value).unwrap();
            assert_eq!(wire.opacity, opacity, "{value}");
        }
        for (value, expected) in [
            ("1.01", "wm_opacity 1.01 is out of range: use more than 0 up to 1"),
            ("-0.5", "wm_opacity -0.5 is out of range: use more than 0 up to 1"),
            ("NaN", "wm_opacity NaN is out of range: use more than 0 up to 1"),
            ("half", "wm_opacity \"half\" is not a number"),
        ] {
            let message = set(&mut OptimizeOptions::default(), "wm_opacity", value)
                .unwrap_err()
                .0;
            assert_eq!(message, expected);
        }
    }

    #[test]
    fn integers_are_checked_against_their_documented_range() {
        for (name, value) in [
            ("quality", 1),
            ("quality", 100),
            ("max_width", 1),
            ("max_width", MAX_BOX_SIDE),
        ] {
            let mut wire = OptimizeOptions::default();
            set(&mut wire, name, &value.to_string()).unwrap();
            assert_eq!(
                if name == "quality" {
                    wire.quality
                } else {
                    wire.max_width
                },
                value
            );
        }
        for (name, value, expected) in [
            ("quality", "101", "quality 101 is out of range: use 1 to 100"),
            (
                "max_width",
                "8193",
                "max_width 8193 is out of range: use 1 to 8192",
            ),
            ("max_height", "0", "max_height 0 is out of range: use 1 to 8192"),
            ("max_height", "-1", "max_height \"-1\" is not a whole number"),
        ] {
            let message = set(&mut OptimizeOptions::default(), name, value).unwrap_err().0;
            assert_eq!(message, expected);
        }
    }

    #[test]
    fn typos_are_close_and_other_names_are_not() {
        assert_eq!(edit_distance("wm_txt", "wm_text"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn insertions_deletions_and_substitutions_cost_one_each() {
        for (a, b, distance) in [
            ("quality", "quality", 0),
            ("qualty", "quality", 1),
            ("quality", "qualty", 1),
            ("quality", "qualitx", 1),
            ("abc", "ac", 1),
            ("abc", "", 3),
            ("format", "fromat", 2),
            ("resize", "max_width", 8),
        ] {
            assert_eq!(edit_distance(a, b), distance, "{a} -> {b}");
            assert_eq!(edit_distance(b, a), distance, "{b} -> {a}");
        }
        let message = find("qualty").err().unwrap().0;
        assert!(message.contains("(did you mean `quality`?)"), "{message}");
        let message = find("wm_txet").err().unwrap().0;
        assert!(message.contains("(did you mean `wm_text`?)"), "{message}");
        let message = find("wm_tx").err().unwrap().0;
        assert!(message.contains("(did you mean `wm_text`?)"), "{message}");
        let message = find("wmtxet").err().unwrap().0;
        assert!(!message.contains("did you mean"), "three edits away: {message}");
    }
}
