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
        BadOptions, DEFAULT_MAX_HEIGHT, DEFAULT_MAX_WIDTH, DEFAULT_OPACITY, DEFAULT_QUALITY, DEFAULT_TEXT,
        MAX_BOX_SIDE, MAX_TEXT_CHARS,
    },
    pb::{ImageFormat, OptimizeOptions, Position, ResizeFilter},
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
    /// A number in (0, 1].
    Fraction {
        default: f32,
    },
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`; empty means true).
    Flag,
}

pub const POSITIONS: &[&str] = &["bottom-right", "bottom-left", "top-right", "top-left", "center"];
pub const FORMATS: &[&str] = &["auto", "avif", "webp", "jpeg", "png"];
pub const RESIZE_FILTERS: &[&str] = &["lanczos3", "fast"];

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
                "center" | "centre" => Position::Center,
                _ => return Err(not_one_of("wm_position", value, POSITIONS)),
            } as i32;
            Ok(())
        },
    },
    Param {
        name: "wm_opacity",
        description: "opacity of the watermark text (its shadow follows)",
        kind: Kind::Fraction {
            default: DEFAULT_OPACITY,
        },
        apply: |wire, value| {
            let opacity: f32 = value
                .trim()
                .parse()
                .map_err(|_| BadOptions(format!("wm_opacity {value:?} is not a number")))?;
            if !(opacity > 0.0 && opacity <= 1.0) {
                return Err(BadOptions(format!(
                    "wm_opacity {value} is out of range: use more than 0 up to 1"
                )));
            }
            wire.opacity = opacity;
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
                "middle",
                "wm_position \"middle\" is not one of bottom-right",
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
                Kind::Fraction { .. } | Kind::Flag => {}
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
        assert_eq!(after("max_height", "480").max_height, 480);
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
