//! The text watermark: anti-aliased glyphs from a bundled font, a soft
//! shadow for legibility, and a colour chosen from the luminance of the
//! pixels the text will cover.

use std::sync::OnceLock;

use ab_glyph::{Font as _, FontRef, GlyphId, PxScale, ScaleFont as _, point};
use nws_watermark::pb::Position;

use super::Pixels;

/// DejaVu Sans Bold (Bitstream Vera licence, see assets/fonts).
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
/// Text height relative to the output height.
const RELATIVE_SIZE: f32 = 0.04;
/// Below this the text stops being legible; small images get text at this
/// size, clipped if it must be.
const MIN_TEXT_PX: f32 = 12.0;
const TEXT_OPACITY: f32 = DEFAULT_OPACITY;
const SHADOW_OPACITY: f32 = 0.55;
/// Relative luminance above which a background counts as light (about
/// mid-grey, L* = 50).
const LIGHT_BACKGROUND: f32 = 0.18;
const REPLACEMENT: char = '\u{FFFD}';

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("the bundled font parses"))
}

/// Which ink the text got, from the background under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    /// Near-black text with a light shadow, on a light background.
    Dark,
    /// White text with a dark shadow, on a dark background.
    Light,
}

impl Ink {
    fn colours(self) -> ([u8; 3], [u8; 3]) {
        match self {
            Ink::Dark => ([16, 16, 16], [255, 255, 255]),
            Ink::Light => ([255, 255, 255], [0, 0, 0]),
        }
    }
}

/// Coverage of the laid-out text, one value in 0..=1 per pixel.
struct Mask {
    width: usize,
    height: usize,
    coverage: Vec<f32>,
}

/// What to draw and how.
#[derive(Debug, Clone, Copy)]
pub struct Mark<'a> {
    pub text: &'a str,
    pub position: Position,
    /// Opacity of the text, in (0, 1]; its shadow follows in proportion.
    pub opacity: f32,
    /// Repeat the text across the whole image instead of one placement.
    pub tiled: bool,
}

pub use nws_watermark::options::DEFAULT_OPACITY;

/// Draws the mark onto `pixels` and returns the ink chosen (for a tiled
/// mark, the ink of its first placement; each one chooses its own).
pub fn draw(pixels: &mut Pixels, mark: &Mark) -> Ink {
    let font = font();
    let text = mark.text;
    let (width, height) = (pixels.width as f32, pixels.height as f32);
    let margin_budget = |px: f32| width - 2.0 * margin(px);

    let mut px = (height * RELATIVE_SIZE).max(MIN_TEXT_PX);
    let natural_width = layout_width(font, text, px);
    if natural_width > margin_budget(px) && natural_width > 0.0 {
        // Shrink long text to fit the width, but never below legibility.
        px = (px * margin_budget(px) / natural_width).max(MIN_TEXT_PX);
    }

    let mask = rasterize(font, text, px);
    let shadow_offset = (px / 24.0).round().max(1.0) as i64;
    let m = margin(px) as i64;
    let (mask_w, mask_h) = (mask.width as i64, mask.height as i64);
    let (img_w, img_h) = (i64::from(pixels.width), i64::from(pixels.height));
    let places = if mark.tiled {
        tiles(img_w, img_h, mask_w, mask_h, m)
    } else {
        let (left, right) = (m, img_w - m - mask_w - shadow_offset);
        let (top, bottom) = (m, img_h - m - mask_h - shadow_offset);
        vec![match mark.position {
            Position::TopLeft => (left, top),
            Position::TopRight => (right, top),
            Position::BottomLeft => (left, bottom),
            Position::Center => ((img_w - mask_w) / 2, (img_h - mask_h) / 2),
            Position::BottomRight | Position::Unspecified => (right, bottom),
        }]
    };

    let text_opacity = mark.opacity.clamp(0.0, 1.0);
    let shadow_opacity = SHADOW_OPACITY * (text_opacity / TEXT_OPACITY).min(1.0);
    let mut first_ink = None;
    for (x, y) in places {
        let ink = choose_ink(pixels, x, y, mask_w + shadow_offset, mask_h + shadow_offset);
        let (text_rgb, shadow_rgb) = ink.colours();
        composite(
            pixels,
            &mask,
            x + shadow_offset,
            y + shadow_offset,
            shadow_rgb,
            shadow_opacity,
        );
        composite(pixels, &mask, x, y, text_rgb, text_opacity);
        first_ink.get_or_insert(ink);
    }
    first_ink.unwrap_or(Ink::Light)
}

/// A brick pattern: rows three text-heights apart, each placement a text
/// width plus two text-heights from the next, odd rows shifted by half a
/// step; placements cut by the edges are kept, so the pattern reaches them.
fn tiles(img_w: i64, img_h: i64, mask_w: i64, mask_h: i64, margin: i64) -> Vec<(i64, i64)> {
    let step_x = (mask_w + 4 * margin).max(1);
    let step_y = (3 * mask_h).max(1);
    let mut places = Vec::new();
    let mut row = 0;
    let mut y = margin;
    while y < img_h {
        let mut x = margin - if row % 2 == 1 { step_x / 2 } else { 0 };
        while x < img_w {
            places.push((x, y));
            x += step_x;
        }
        y += step_y;
        row += 1;
    }
    places
}

fn margin(px: f32) -> f32 {
    (px * 0.5).round()
}

/// Glyphs for `text`, with characters the font lacks replaced by U+FFFD.
fn glyph_ids<'a>(font: &'a FontRef<'static>, text: &'a str) -> impl Iterator<Item = GlyphId> + 'a {
    let replacement = font.glyph_id(REPLACEMENT);
    text.chars().map(move |c| match font.glyph_id(c) {
        GlyphId(0) => replacement,
        id => id,
    })
}

fn layout_width(font: &FontRef<'static>, text: &str, px: f32) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut previous = None;
    let mut caret = 0.0;
    for id in glyph_ids(font, text) {
        if let Some(prev) = previous {
            caret += scaled.kern(prev, id);
        }
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    caret
}

fn rasterize(font: &FontRef<'static>, text: &str, px: f32) -> Mask {
    let scaled = font.as_scaled(PxScale::from(px));
    let width = layout_width(font, text, px).ceil().max(1.0) as usize;
    let height = (scaled.ascent() - scaled.descent()).ceil().max(1.0) as usize;
    let mut coverage = vec![0f32; width * height];
    let mut previous = None;
    let mut caret = 0.0;
    for id in glyph_ids(font, text) {
        if let Some(prev) = previous {
            caret += scaled.kern(prev, id);
        }
        let glyph = id.with_scale_and_position(px, point(caret, scaled.ascent()));
        caret += scaled.h_advance(id);
        previous = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // whitespace
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, c| {
            let x = bounds.min.x as i64 + i64::from(gx);
            let y = bounds.min.y as i64 + i64::from(gy);
            if (0..width as i64).contains(&x) && (0..height as i64).contains(&y) {
                let cell = &mut coverage[y as usize * width + x as usize];
                *cell = (*cell + c).min(1.0);
            }
        });
    }
    Mask {
        width,
        height,
        coverage,
    }
}

/// sRGB byte → linear light, for a luminance that matches perception.
fn linear(channel: u8) -> f32 {
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let c = i as f32 / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        })
    })[usize::from(channel)]
}

/// Mean relative luminance of the pixels under the text's box (clipped to
/// the image): light ink on dark, dark ink on light.
fn choose_ink(pixels: &Pixels, x: i64, y: i64, w: i64, h: i64) -> Ink {
    let (x0, y0) = (x.max(0) as u32, y.max(0) as u32);
    let x1 = ((x + w).max(0) as u32).min(pixels.width);
    let y1 = ((y + h).max(0) as u32).min(pixels.height);
    let channels = usize::from(pixels.channels);
    let mut sum = 0f64;
    let mut count = 0u64;
    for row in y0..y1 {
        let start = (row as usize * pixels.width as usize + x0 as usize) * channels;
        let end = (row as usize * pixels.width as usize + x1 as usize) * channels;
        for px in pixels.data[start..end].chunks_exact(channels) {
            let luminance = 0.2126 * linear(px[0]) + 0.7152 * linear(px[1]) + 0.0722 * linear(px[2]);
            sum += f64::from(luminance);
            count += 1;
        }
    }
    let mean = if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    };
    if mean > LIGHT_BACKGROUND {
        Ink::Dark
    } else {
        Ink::Light
    }
}

/// Blends `rgb` through `mask` at (`x`, `y`), clipped to the image. With an
/// alpha channel the text also makes the pixels under it more opaque.
fn composite(pixels: &mut Pixels, mask: &Mask, x: i64, y: i64, rgb: [u8; 3], opacity: f32) {
    let channels = usize::from(pixels.channels);
    let (img_w, img_h) = (i64::from(pixels.width), i64::from(pixels.height));
    for my in 0..mask.height as i64 {
        let py = y + my;
        if !(0..img_h).contains(&py) {
            continue;
        }
        for mx in 0..mask.width as i64 {
            let px = x + mx;
            if !(0..img_w).contains(&px) {
                continue;
            }
            let a = mask.coverage[(my as usize) * mask.width + mx as usize] * opacity;
            if a <= 0.0 {
                continue;
            }
            let offset = ((py * img_w + px) as usize) * channels;
            let pixel = &mut pixels.data[offset..offset + channels];
            if channels == 4 {
                let da = f32::from(pixel[3]) / 255.0;
                let out_a = a + da * (1.0 - a);
                for c in 0..3 {
                    let blended = (f32::from(rgb[c]) * a + f32::from(pixel[c]) * da * (1.0 - a)) / out_a;
                    pixel[c] = blended.round() as u8;
                }
                pixel[3] = (out_a * 255.0).round() as u8;
            } else {
                for c in 0..3 {
                    let blended = f32::from(pixel[c]) + (f32::from(rgb[c]) - f32::from(pixel[c])) * a;
                    pixel[c] = blended.round() as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(text: &str, position: Position) -> Mark<'_> {
        Mark {
            text,
            position,
            opacity: DEFAULT_OPACITY,
            tiled: false,
        }
    }

    fn flat(width: u32, height: u32, value: u8) -> Pixels {
        Pixels {
            width,
            height,
            channels: 3,
            data: vec![value; (width * height * 3) as usize],
        }
    }

    #[test]
    fn ink_contrasts_with_the_background() {
        let mut light = flat(800, 600, 230);
        assert_eq!(
            draw(&mut light, &mark("NWS © 2026", Position::BottomRight)),
            Ink::Dark
        );
        let mut dark = flat(800, 600, 20);
        assert_eq!(
            draw(&mut dark, &mark("NWS © 2026", Position::BottomRight)),
            Ink::Light
        );
    }

    #[test]
    fn text_lands_in_the_requested_corner_only() {
        for (position, in_left, in_top) in [
            (Position::TopLeft, true, true),
            (Position::TopRight, false, true),
            (Position::BottomLeft, true, false),
            (Position::BottomRight, false, false),
        ] {
            let mut image = flat(800, 600, 128);
            draw(&mut image, &mark("Watermark", position));
            let changed: Vec<(u32, u32)> = (0..600)
                .flat_map(|y| (0..800).map(move |x| (x, y)))
                .filter(|&(x, y)| image.data[((y * 800 + x) * 3) as usize] != 128)
                .collect();
            assert!(!changed.is_empty(), "{position:?} drew nothing");
            assert!(
                changed
                    .iter()
                    .all(|&(x, y)| (x < 400) == in_left && (y < 300) == in_top),
                "{position:?}"
            );
        }
    }

    #[test]
    fn a_centred_mark_is_centred() {
        let mut image = flat(800, 600, 128);
        draw(&mut image, &mark("Watermark", Position::Center));
        let changed: Vec<(u32, u32)> = (0..600)
            .flat_map(|y| (0..800).map(move |x| (x, y)))
            .filter(|&(x, y)| image.data[((y * 800 + x) * 3) as usize] != 128)
            .collect();
        let (xs, ys): (Vec<u32>, Vec<u32>) = changed.into_iter().unzip();
        let middle = |v: &[u32]| (v.iter().min().unwrap() + v.iter().max().unwrap()) / 2;
        assert!(middle(&xs).abs_diff(400) <= 4, "x centre {}", middle(&xs));
        assert!(middle(&ys).abs_diff(300) <= 4, "y centre {}", middle(&ys));
    }

    #[test]
    fn a_character_the_font_lacks_is_drawn_as_the_replacement_glyph() {
        let render = |text: &str| {
            let mut image = flat(800, 600, 128);
            draw(&mut image, &mark(text, Position::Center));
            image.data
        };
        // The bundled font has no Egyptian hieroglyphs.
        let lacking = render("NWS 𓀀 mark");
        assert_eq!(lacking, render("NWS \u{FFFD} mark"), "drawn as U+FFFD");
        assert_ne!(lacking, render("NWS  mark"), "not dropped");
        assert_ne!(lacking, render("NWS ? mark"), "not a question mark");
    }

    #[test]
    fn tiny_images_do_not_panic() {
        let mut tiny = flat(1, 1, 0);
        draw(&mut tiny, &mark("𓀀 ☃ ©", Position::Center));
        let mut strip = flat(1920, 1, 255);
        draw(&mut strip, &mark("NWS Watermark", Position::BottomLeft));
    }

    #[test]
    fn a_tiled_mark_covers_every_part_of_the_image() {
        let mut image = flat(1200, 800, 40);
        let tiled = Mark {
            tiled: true,
            ..mark("NWS", Position::BottomRight)
        };
        draw(&mut image, &tiled);
        // Every 200×200 cell has text in it.
        for cell_y in 0..4 {
            for cell_x in 0..6 {
                let touched = (cell_y * 200..(cell_y + 1) * 200).any(|y| {
                    (cell_x * 200..(cell_x + 1) * 200).any(|x| {
                        let offset = ((y * 1200 + x) * 3) as usize;
                        image.data[offset] != 40
                    })
                });
                assert!(touched, "cell ({cell_x}, {cell_y}) has no text");
            }
        }
    }

    #[test]
    fn opacity_scales_the_ink() {
        let mut faint = flat(400, 200, 0);
        let mut strong = flat(400, 200, 0);
        let faint_mark = Mark {
            opacity: 0.2,
            ..mark("NWS", Position::Center)
        };
        draw(&mut faint, &faint_mark);
        draw(
            &mut strong,
            &Mark {
                opacity: 1.0,
                ..faint_mark
            },
        );
        let brightest = |p: &Pixels| p.data.iter().copied().max().unwrap();
        assert_eq!(brightest(&strong), 255);
        assert!((40..=60).contains(&brightest(&faint)), "{}", brightest(&faint));
    }
}
