//! The watermark: text in a bundled font (characters it lacks from a CJK
//! fallback) and/or an image (a logo), anchored at one of nine points or
//! tiled, shifted and rotated. The text's ink is chosen from the pixels it
//! covers, per placement, unless the caller fixed it; a soft shadow in the
//! contrasting colour keeps it legible on busy backgrounds.
//!
//! The mark is drawn once into a *stamp* (text coverage and image pixels,
//! in floating point so rotation resamples without banding), rotated once,
//! then blended at each placement.

use std::sync::{LazyLock, OnceLock};

use ab_glyph::{Font as _, FontRef, GlyphId, PxScale, ScaleFont as _, point};
use nws_watermark::{
    options::Options,
    pb::{Font, Position, ResizeFilter},
};

use super::{Pixels, resize};

pub use nws_watermark::options::DEFAULT_OPACITY;

const SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
const SERIF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSerif-Bold.ttf");
const MONO: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono-Bold.ttf");
/// Chinese and Japanese, which DejaVu lacks.
const CJK: &[u8] = include_bytes!("../../assets/fonts/DroidSansFallbackFull.ttf");
/// Korean Hangul, which Droid Sans Fallback lacks.
const HANGUL: &[u8] = include_bytes!("../../assets/fonts/NanumSquareB.ttf");
/// Below this the text stops being legible; small images get text at this
/// size, clipped if it must be.
const MIN_TEXT_PX: f32 = 12.0;
/// The opacity the shadow's strength is designed for: fainter text gets a
/// proportionally fainter shadow.
const TEXT_OPACITY: f32 = DEFAULT_OPACITY;
const SHADOW_OPACITY: f32 = 0.55;
/// Relative luminance above which a background counts as light (about
/// mid-grey, L* = 50).
const LIGHT_BACKGROUND: f32 = 0.18;
const REPLACEMENT: char = '\u{FFFD}';

/// A decoded image mark: what [`Mark::image`] points to.
pub type Logo = Pixels;

fn face(bytes: &'static [u8], slot: &'static OnceLock<FontRef<'static>>) -> &'static FontRef<'static> {
    slot.get_or_init(|| FontRef::try_from_slice(bytes).expect("the bundled fonts parse"))
}

/// The chosen typeface, then the fallbacks for what it lacks, in order.
fn faces(font: Font) -> [&'static FontRef<'static>; 3] {
    static SANS_FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    static SERIF_FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    static MONO_FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    static CJK_FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    static HANGUL_FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    let primary = match font {
        Font::Serif => face(SERIF, &SERIF_FACE),
        Font::Mono => face(MONO, &MONO_FACE),
        Font::Sans | Font::Unspecified => face(SANS, &SANS_FACE),
    };
    [primary, face(CJK, &CJK_FACE), face(HANGUL, &HANGUL_FACE)]
}

/// Which ink the text got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    /// Near-black text with a light shadow, on a light background.
    Dark,
    /// White text with a dark shadow, on a dark background.
    Light,
    /// The caller's colour (RGBA).
    Fixed([u8; 4]),
}

/// What to draw and how: [`Options`]' watermark settings, with the image
/// mark decoded.
#[derive(Debug, Clone, Copy)]
pub struct Mark<'a> {
    /// Lines separated by `\n`; empty for an image alone.
    pub text: &'a str,
    pub font: Font,
    /// Text height as a fraction of the output height.
    pub text_size: f32,
    /// A fixed ink instead of the adaptive one.
    pub color: Option<[u8; 4]>,
    pub image: Option<&'a Logo>,
    /// Width of the image as a fraction of the output width.
    pub image_scale: f32,
    pub position: Position,
    /// Opacity of the mark, in (0, 1]; the shadow follows in proportion.
    pub opacity: f32,
    /// Repeat the mark across the whole image instead of one placement.
    pub tiled: bool,
    /// Pixels when |value| >= 1, else a fraction of the output side.
    pub offset_x: f32,
    pub offset_y: f32,
    /// Degrees, clockwise.
    pub rotate: f32,
    /// Gap between tiles: 0 for the default, pixels when >= 1, else a
    /// fraction of the output width.
    pub spacing: f32,
}

impl<'a> Mark<'a> {
    /// The mark `options` describe, with its image (if it names one)
    /// already decoded.
    pub fn new(options: &'a Options, image: Option<&'a Logo>) -> Self {
        Self {
            text: &options.text,
            font: options.font,
            text_size: options.text_size,
            color: options.color,
            image,
            image_scale: options.image_scale,
            position: options.position,
            opacity: options.opacity,
            tiled: options.tiled,
            offset_x: options.offset_x,
            offset_y: options.offset_y,
            rotate: options.rotate,
            spacing: options.spacing,
        }
    }

    /// Text at `position` with every other setting at its default.
    pub fn text(text: &'a str, position: Position) -> Self {
        static DEFAULTS: LazyLock<Options> = LazyLock::new(Options::default);
        Self {
            text,
            position,
            ..Mark::new(&DEFAULTS, None)
        }
    }
}

/// Draws the mark onto `pixels` and returns the ink of its text (for a
/// tiled mark, that of the first placement; each chooses its own), or
/// `None` for an image alone.
pub fn draw(pixels: &mut Pixels, mark: &Mark) -> Option<Ink> {
    Drawing::new(mark, pixels.width, pixels.height).paint(pixels)
}

/// A mark laid out for one output size: its stamp rendered and rotated,
/// its placements found. The frames of an animation share one, so the
/// text is laid out once and its ink stays the same from frame to frame.
pub struct Drawing {
    stamp: Stamp,
    places: Vec<(i64, i64)>,
    shadow: i64,
    opacity: f32,
    color: Option<[u8; 4]>,
    /// Each placement's ink, chosen on the first image painted.
    inks: Option<Vec<Ink>>,
}

impl Drawing {
    /// Lays `mark` out for a `width`×`height` output.
    pub fn new(mark: &Mark, width: u32, height: u32) -> Self {
        let (img_w, img_h) = (i64::from(width), i64::from(height));
        let (across, down) = anchor(mark.position);
        let text = Text::fit(mark, width, height);
        let margin = match &text {
            Some(text) => (text.px * 0.5).round() as i64,
            None => (img_w / 50).max(1),
        };
        let shadow = text
            .as_ref()
            .map_or(0, |text| (text.px / 24.0).round().max(1.0) as i64);
        let image = mark
            .image
            .and_then(|logo| scaled_logo(logo, mark.image_scale, width, height));
        let stamp = Stamp::compose(text.as_ref(), image, across, shadow).rotated(mark.rotate);
        let (w, h) = (stamp.width as i64, stamp.height as i64);
        let shift_x = shift(mark.offset_x, img_w);
        let shift_y = shift(mark.offset_y, img_h);
        let places = if stamp.is_empty() {
            Vec::new()
        } else if mark.tiled {
            let gap = match mark.spacing {
                0.0 => match &text {
                    Some(text) => (2.0 * text.px).round() as i64,
                    None => (w / 4).max(1),
                },
                s if s < 1.0 => (f64::from(s) * img_w as f64).round() as i64,
                s => s.round() as i64,
            };
            tiles(
                (img_w, img_h),
                (w + shadow, h + shadow),
                gap.max(1),
                (margin + shift_x, margin + shift_y),
            )
        } else {
            let place = |side: Side, image: i64, size: i64| match side {
                Side::Start => margin,
                Side::Middle => (image - size) / 2,
                Side::End => image - margin - size - shadow,
            };
            vec![(place(across, img_w, w) + shift_x, place(down, img_h, h) + shift_y)]
        };
        Self {
            stamp,
            places,
            shadow,
            opacity: mark.opacity.clamp(0.0, 1.0),
            color: mark.color,
            inks: None,
        }
    }

    /// Paints the mark onto `pixels`, which have the size it was laid out
    /// for, and returns the ink of its first placement's text. The first
    /// call chooses the adaptive inks from what lies under each placement;
    /// later calls (an animation's next frames) keep them, so the text does
    /// not flicker as the picture under it moves.
    pub fn paint(&mut self, pixels: &mut Pixels) -> Option<Ink> {
        let stamp = &self.stamp;
        if self.places.is_empty() || stamp.coverage.is_empty() {
            // An image alone (or nothing to draw): no ink to choose.
            if !stamp.art.is_empty() {
                for &(x, y) in &self.places {
                    blend_art(pixels, stamp, x, y, self.opacity);
                }
            }
            return None;
        }
        let inks = self.inks.get_or_insert_with(|| {
            self.places
                .iter()
                .map(|&(x, y)| match self.color {
                    Some(rgba) => Ink::Fixed(rgba),
                    None => adaptive_ink(pixels, stamp, x, y),
                })
                .collect()
        });
        let shadow = self.shadow;
        for (&(x, y), &ink) in self.places.iter().zip(inks.iter()) {
            let (text_rgb, text_alpha, shadow_rgb) = colours(ink);
            let text_opacity = self.opacity * text_alpha;
            let shadow_opacity = SHADOW_OPACITY * (text_opacity / TEXT_OPACITY).min(1.0);
            blend_coverage(pixels, stamp, x + shadow, y + shadow, shadow_rgb, shadow_opacity);
            blend_coverage(pixels, stamp, x, y, text_rgb, text_opacity);
            if !stamp.art.is_empty() {
                blend_art(pixels, stamp, x, y, self.opacity);
            }
        }
        inks.first().copied()
    }
}

/// Where along one axis the mark is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Start,
    Middle,
    End,
}

/// The anchor's horizontal and vertical sides.
fn anchor(position: Position) -> (Side, Side) {
    use Side::{End, Middle, Start};
    match position {
        Position::TopLeft => (Start, Start),
        Position::Top => (Middle, Start),
        Position::TopRight => (End, Start),
        Position::Left => (Start, Middle),
        Position::Center => (Middle, Middle),
        Position::Right => (End, Middle),
        Position::BottomLeft => (Start, End),
        Position::Bottom => (Middle, End),
        Position::BottomRight | Position::Unspecified => (End, End),
    }
}

/// An offset in pixels: as given when |value| >= 1, else that fraction of
/// the side.
fn shift(value: f32, side: i64) -> i64 {
    if value.abs() < 1.0 {
        (f64::from(value) * side as f64).round() as i64
    } else {
        value.round() as i64
    }
}

/// Ink, its alpha, and the shadow's colour.
fn colours(ink: Ink) -> ([u8; 3], f32, [u8; 3]) {
    match ink {
        Ink::Dark => ([16, 16, 16], 1.0, [255, 255, 255]),
        Ink::Light => ([255, 255, 255], 1.0, [0, 0, 0]),
        Ink::Fixed([r, g, b, a]) => {
            let light = luminance(&[r, g, b]) > LIGHT_BACKGROUND;
            let shadow = if light { [0, 0, 0] } else { [255, 255, 255] };
            ([r, g, b], f32::from(a) / 255.0, shadow)
        }
    }
}

/// The text, laid out at its final size.
struct Text<'a> {
    lines: Vec<&'a str>,
    /// The chosen font first, then the fallbacks.
    faces: [&'static FontRef<'static>; 3],
    px: f32,
}

impl<'a> Text<'a> {
    /// The mark's text at its size, shrunk so the widest line fits the
    /// width between the margins (never below legibility); `None` when the
    /// mark has no text.
    fn fit(mark: &Mark<'a>, width: u32, height: u32) -> Option<Self> {
        if mark.text.is_empty() {
            return None;
        }
        let mut text = Self {
            lines: mark.text.lines().collect(),
            faces: faces(mark.font),
            px: (height as f32 * mark.text_size).max(MIN_TEXT_PX),
        };
        let budget = width as f32 - 2.0 * (text.px * 0.5).round();
        let widest = text.widest();
        if widest > budget && widest > 0.0 {
            text.px = (text.px * budget / widest).max(MIN_TEXT_PX);
        }
        Some(text)
    }

    /// Each character's face and glyph: the first font that has it, else
    /// the chosen font's U+FFFD.
    fn glyphs<'s>(
        &'s self,
        line: &'s str,
    ) -> impl Iterator<Item = (&'static FontRef<'static>, GlyphId)> + 's {
        let primary = self.faces[0];
        line.chars().map(move |c| {
            self.faces
                .iter()
                .find_map(|face| match face.glyph_id(c) {
                    GlyphId(0) => None,
                    id => Some((*face, id)),
                })
                .unwrap_or_else(|| (primary, primary.glyph_id(REPLACEMENT)))
        })
    }

    /// Pen positions along `line`, with its glyphs, and the line's width.
    fn layout(&self, line: &str) -> (Vec<(&'static FontRef<'static>, GlyphId, f32)>, f32) {
        let scale = PxScale::from(self.px);
        let mut placed = Vec::with_capacity(line.len());
        let mut previous: Option<(&FontRef<'static>, GlyphId)> = None;
        let mut caret = 0.0;
        for (face, id) in self.glyphs(line) {
            let scaled = face.as_scaled(scale);
            // Kerning pairs exist within one font only.
            if let Some((prev_face, prev_id)) = previous
                && std::ptr::eq(prev_face, face)
            {
                caret += scaled.kern(prev_id, id);
            }
            placed.push((face, id, caret));
            caret += scaled.h_advance(id);
            previous = Some((face, id));
        }
        (placed, caret)
    }

    fn widest(&self) -> f32 {
        self.lines
            .iter()
            .map(|line| self.layout(line).1)
            .fold(0.0, f32::max)
    }

    /// Ascent, descent and the distance between baselines, from the chosen
    /// font, so lines are spaced as that font intends.
    fn metrics(&self) -> (f32, f32, f32) {
        let scaled = self.faces[0].as_scaled(PxScale::from(self.px));
        let (ascent, descent) = (scaled.ascent(), scaled.descent());
        (ascent, descent, ascent - descent + scaled.line_gap())
    }

    /// Coverage of the laid-out lines, each aligned to `across`.
    fn rasterize(&self, across: Side) -> Layer {
        let (ascent, descent, line_height) = self.metrics();
        let width = self.widest().ceil().max(1.0) as usize;
        let lines = self.lines.len().max(1);
        let height = ((lines - 1) as f32 * line_height + ascent - descent)
            .ceil()
            .max(1.0) as usize;
        let mut coverage = vec![0f32; width * height];
        for (row, line) in self.lines.iter().enumerate() {
            let (placed, line_width) = self.layout(line);
            let indent = match across {
                Side::Start => 0.0,
                Side::Middle => ((width as f32 - line_width) / 2.0).floor(),
                Side::End => (width as f32 - line_width).floor(),
            };
            let baseline = row as f32 * line_height + ascent;
            for (face, id, caret) in placed {
                let glyph = id.with_scale_and_position(self.px, point(indent + caret, baseline));
                let Some(outline) = face.outline_glyph(glyph) else {
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
        }
        Layer {
            width,
            height,
            values: coverage,
        }
    }
}

/// A rectangle of values: one per pixel (coverage), or four (premultiplied
/// RGBA, each in 0..=1).
struct Layer {
    width: usize,
    height: usize,
    values: Vec<f32>,
}

/// The logo resized to `scale` of the output width (never taller than the
/// output), premultiplied.
fn scaled_logo(logo: &Logo, scale: f32, out_w: u32, out_h: u32) -> Option<Layer> {
    if logo.width == 0 || logo.height == 0 {
        return None;
    }
    let aspect = f64::from(logo.height) / f64::from(logo.width);
    let mut width = (f64::from(out_w) * f64::from(scale)).round().max(1.0);
    let mut height = (width * aspect).round().max(1.0);
    if height > f64::from(out_h) {
        height = f64::from(out_h);
        width = (height / aspect).round().max(1.0);
    }
    let resized = resize::resize(logo.clone(), width as u32, height as u32, ResizeFilter::Lanczos3).ok()?;
    let channels = usize::from(resized.channels);
    let values = resized
        .data
        .chunks_exact(channels)
        .flat_map(|px| {
            let alpha = if channels == 4 {
                f32::from(px[3]) / 255.0
            } else {
                1.0
            };
            let premultiplied = |c: u8| f32::from(c) / 255.0 * alpha;
            [
                premultiplied(px[0]),
                premultiplied(px[1]),
                premultiplied(px[2]),
                alpha,
            ]
        })
        .collect();
    super::buffers::give_back(resized.data);
    Some(Layer {
        width: resized.width as usize,
        height: resized.height as usize,
        values,
    })
}

/// The mark before placement: text coverage and image pixels in one
/// rectangle, the image above the text, both aligned to the anchor's side.
struct Stamp {
    width: usize,
    height: usize,
    /// Text coverage, one value per pixel; empty without text.
    coverage: Vec<f32>,
    /// Image pixels, premultiplied RGBA; empty without an image.
    art: Vec<f32>,
}

impl Stamp {
    fn compose(text: Option<&Text>, image: Option<Layer>, across: Side, shadow: i64) -> Self {
        let text = text.map(|text| (text.rasterize(across), text.px));
        let gap = match (&text, &image) {
            (Some((_, px)), Some(_)) => (px * 0.25).round() as usize + shadow as usize,
            _ => 0,
        };
        let image_size = image.as_ref().map_or((0, 0), |layer| (layer.width, layer.height));
        let text_size = text
            .as_ref()
            .map_or((0, 0), |(layer, _)| (layer.width, layer.height));
        let width = image_size.0.max(text_size.0);
        let height = image_size.1 + gap + text_size.1;
        let indent = |inner: usize| match across {
            Side::Start => 0,
            Side::Middle => (width - inner) / 2,
            Side::End => width - inner,
        };
        let mut stamp = Self {
            width,
            height,
            coverage: Vec::new(),
            art: Vec::new(),
        };
        if let Some(layer) = image {
            stamp.art = vec![0.0; width * height * 4];
            let left = indent(layer.width);
            for row in 0..layer.height {
                let from = row * layer.width * 4;
                let to = (row * width + left) * 4;
                stamp.art[to..to + layer.width * 4]
                    .copy_from_slice(&layer.values[from..from + layer.width * 4]);
            }
        }
        if let Some((layer, _)) = text {
            stamp.coverage = vec![0.0; width * height];
            let (left, top) = (indent(layer.width), image_size.1 + gap);
            for row in 0..layer.height {
                let from = row * layer.width;
                let to = (top + row) * width + left;
                stamp.coverage[to..to + layer.width].copy_from_slice(&layer.values[from..from + layer.width]);
            }
        }
        stamp
    }

    fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The stamp turned `degrees` clockwise about its centre, in the
    /// smallest rectangle that holds it (bilinear resampling).
    fn rotated(self, degrees: f32) -> Self {
        if degrees == 0.0 || self.is_empty() {
            return self;
        }
        let (sin, cos) = f64::from(degrees).to_radians().sin_cos();
        let (w, h) = (self.width as f64, self.height as f64);
        let width = (w * cos.abs() + h * sin.abs()).ceil() as usize;
        let height = (w * sin.abs() + h * cos.abs()).ceil() as usize;
        let (cx, cy) = (w / 2.0, h / 2.0);
        let (ncx, ncy) = (width as f64 / 2.0, height as f64 / 2.0);
        let mut coverage = vec![
            0.0;
            if self.coverage.is_empty() {
                0
            } else {
                width * height
            }
        ];
        let mut art = vec![
            0.0;
            if self.art.is_empty() {
                0
            } else {
                width * height * 4
            }
        ];
        for y in 0..height {
            for x in 0..width {
                let (dx, dy) = (x as f64 + 0.5 - ncx, y as f64 + 0.5 - ncy);
                // Where this pixel's centre comes from, before the turn.
                let sx = cos * dx + sin * dy + cx - 0.5;
                let sy = -sin * dx + cos * dy + cy - 0.5;
                if sx <= -1.0 || sy <= -1.0 || sx >= w || sy >= h {
                    continue;
                }
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
                let taps = [
                    (x0, y0, (1.0 - fx) * (1.0 - fy)),
                    (x0 + 1.0, y0, fx * (1.0 - fy)),
                    (x0, y0 + 1.0, (1.0 - fx) * fy),
                    (x0 + 1.0, y0 + 1.0, fx * fy),
                ];
                for (tx, ty, weight) in taps {
                    if tx < 0.0 || ty < 0.0 || tx >= w || ty >= h || weight == 0.0 {
                        continue;
                    }
                    let source = ty as usize * self.width + tx as usize;
                    let target = y * width + x;
                    if !coverage.is_empty() {
                        coverage[target] += self.coverage[source] * weight;
                    }
                    if !art.is_empty() {
                        for c in 0..4 {
                            art[target * 4 + c] += self.art[source * 4 + c] * weight;
                        }
                    }
                }
            }
        }
        Self {
            width,
            height,
            coverage,
            art,
        }
    }
}

/// A brick pattern: stamps `gap` apart both ways, odd rows shifted by half
/// a step, laid from `origin` in every direction until the image is
/// covered; placements cut by the edges are kept, so the pattern reaches
/// them.
fn tiles(image: (i64, i64), stamp: (i64, i64), gap: i64, origin: (i64, i64)) -> Vec<(i64, i64)> {
    let (img_w, img_h) = image;
    let (w, h) = stamp;
    let (step_x, step_y) = ((w + gap).max(1), (h + gap).max(1));
    // The first row or column that reaches into the image.
    let first = |origin: i64, size: i64, step: i64| (-size - origin).div_euclid(step) + 1;
    let mut places = Vec::new();
    let mut row = first(origin.1, h, step_y);
    loop {
        let y = origin.1 + row * step_y;
        if y >= img_h {
            break;
        }
        let row_origin = origin.0 - if row.rem_euclid(2) == 1 { step_x / 2 } else { 0 };
        let mut column = first(row_origin, w, step_x);
        loop {
            let x = row_origin + column * step_x;
            if x >= img_w {
                break;
            }
            places.push((x, y));
            column += 1;
        }
        row += 1;
    }
    places
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

fn luminance(rgb: &[u8]) -> f32 {
    0.2126 * linear(rgb[0]) + 0.7152 * linear(rgb[1]) + 0.0722 * linear(rgb[2])
}

/// Light ink on dark, dark ink on light: the mean relative luminance of the
/// pixels under the text at (`x`, `y`), weighted by how much of each the
/// text covers (clipped to the image).
fn adaptive_ink(pixels: &Pixels, stamp: &Stamp, x: i64, y: i64) -> Ink {
    let channels = usize::from(pixels.channels);
    let mut sum = 0f64;
    let mut weight = 0f64;
    for_each_overlap(pixels, stamp, x, y, |offset, cell| {
        let cover = stamp.coverage[cell];
        if cover > 0.0 {
            sum += f64::from(luminance(&pixels.data[offset..offset + channels]) * cover);
            weight += f64::from(cover);
        }
    });
    let mean = if weight == 0.0 { 0.0 } else { sum / weight };
    if mean > f64::from(LIGHT_BACKGROUND) {
        Ink::Dark
    } else {
        Ink::Light
    }
}

/// Calls `visit(pixel byte offset, stamp cell)` for every stamp cell that
/// lands inside the image when the stamp's corner is at (`x`, `y`).
fn for_each_overlap(pixels: &Pixels, stamp: &Stamp, x: i64, y: i64, mut visit: impl FnMut(usize, usize)) {
    let channels = pixels.channels as usize;
    let (img_w, img_h) = (i64::from(pixels.width), i64::from(pixels.height));
    let (w, h) = (stamp.width as i64, stamp.height as i64);
    let (col0, col1) = ((-x).max(0), (img_w - x).min(w));
    let (row0, row1) = ((-y).max(0), (img_h - y).min(h));
    for row in row0..row1 {
        let pixel_row = ((y + row) * img_w) as usize;
        for col in col0..col1 {
            let offset = (pixel_row + (x + col) as usize) * channels;
            visit(offset, (row * w + col) as usize);
        }
    }
}

/// Blends `rgb` through the stamp's text coverage at (`x`, `y`), clipped
/// to the image. With an alpha channel the text also makes the pixels
/// under it more opaque.
fn blend_coverage(pixels: &mut Pixels, stamp: &Stamp, x: i64, y: i64, rgb: [u8; 3], opacity: f32) {
    if opacity <= 0.0 {
        return;
    }
    let channels = usize::from(pixels.channels);
    let rgb = rgb.map(f32::from);
    let mut data = std::mem::take(&mut pixels.data);
    for_each_overlap(pixels, stamp, x, y, |offset, cell| {
        let a = stamp.coverage[cell] * opacity;
        if a > 0.0 {
            over(&mut data[offset..offset + channels], rgb.map(|c| c * a), a);
        }
    });
    pixels.data = data;
}

/// Blends the stamp's image (premultiplied) at (`x`, `y`), clipped to the
/// image, at `opacity`.
fn blend_art(pixels: &mut Pixels, stamp: &Stamp, x: i64, y: i64, opacity: f32) {
    let channels = usize::from(pixels.channels);
    let mut data = std::mem::take(&mut pixels.data);
    for_each_overlap(pixels, stamp, x, y, |offset, cell| {
        let source = &stamp.art[cell * 4..cell * 4 + 4];
        let a = source[3] * opacity;
        if a > 0.0 {
            let rgb = [source[0], source[1], source[2]].map(|c| c * 255.0 * opacity);
            over(&mut data[offset..offset + channels], rgb, a);
        }
    });
    pixels.data = data;
}

/// Porter-Duff "over": a premultiplied source (`rgb` in 0..=255, alpha
/// `a`) onto one RGB or straight-alpha RGBA pixel.
fn over(pixel: &mut [u8], rgb: [f32; 3], a: f32) {
    if pixel.len() == 4 {
        let da = f32::from(pixel[3]) / 255.0;
        let out_a = a + da * (1.0 - a);
        if out_a <= 0.0 {
            return;
        }
        for c in 0..3 {
            let blended = (rgb[c] + f32::from(pixel[c]) * da * (1.0 - a)) / out_a;
            pixel[c] = blended.round().clamp(0.0, 255.0) as u8;
        }
        pixel[3] = (out_a * 255.0).round() as u8;
    } else {
        for c in 0..3 {
            let blended = rgb[c] + f32::from(pixel[c]) * (1.0 - a);
            pixel[c] = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use nws_runtime::testing::bounds;

    use super::*;

    fn mark(text: &str, position: Position) -> Mark<'_> {
        Mark::text(text, position)
    }

    fn flat(width: u32, height: u32, value: u8) -> Pixels {
        Pixels {
            width,
            height,
            channels: 3,
            data: vec![value; (width * height * 3) as usize],
        }
    }

    /// The pixels `draw` changed, as (x, y).
    fn changed(before: &Pixels, after: &Pixels) -> Vec<(u32, u32)> {
        let channels = usize::from(before.channels);
        (0..before.height)
            .flat_map(|y| (0..before.width).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let at = (y as usize * before.width as usize + x as usize) * channels;
                before.data[at..at + channels] != after.data[at..at + channels]
            })
            .collect()
    }

    fn drawn(image: &Pixels, mark: &Mark) -> Vec<(u32, u32)> {
        let mut after = image.clone();
        draw(&mut after, mark);
        changed(image, &after)
    }

    #[test]
    fn ink_contrasts_with_the_background() {
        let mut light = flat(800, 600, 230);
        assert_eq!(
            draw(&mut light, &mark("NWS © 2026", Position::BottomRight)),
            Some(Ink::Dark)
        );
        let mut dark = flat(800, 600, 20);
        assert_eq!(
            draw(&mut dark, &mark("NWS © 2026", Position::BottomRight)),
            Some(Ink::Light)
        );
    }

    #[test]
    fn one_drawing_keeps_the_ink_it_chose_first_and_draws_the_same_place() {
        // An animation's frames: the first dark, the next light. A drawing
        // made for each would flip the ink; one drawing keeps it.
        let mark = mark("NWS © 2026", Position::BottomRight);
        let mut drawing = Drawing::new(&mark, 800, 600);
        let (dark, light) = (flat(800, 600, 20), flat(800, 600, 230));
        let mut first = dark.clone();
        assert_eq!(drawing.paint(&mut first), Some(Ink::Light));
        let mut second = light.clone();
        assert_eq!(drawing.paint(&mut second), Some(Ink::Light));
        assert_eq!(draw(&mut light.clone(), &mark), Some(Ink::Dark));
        // The first frame is drawn as `draw` draws it, and the next in the
        // same place (faint edges aside, which show on one background only).
        assert_eq!(changed(&dark, &first), drawn(&dark, &mark));
        let (a, b) = (bounds(&changed(&dark, &first)), bounds(&changed(&light, &second)));
        let close = |p: u32, q: u32| p.abs_diff(q) <= 2;
        assert!(
            close(a.0, b.0) && close(a.1, b.1) && close(a.2, b.2) && close(a.3, b.3),
            "{a:?} then {b:?}"
        );
    }

    #[test]
    fn each_of_the_nine_anchors_puts_the_mark_in_its_third() {
        let image = flat(900, 600, 128);
        for (position, column, row) in [
            (Position::TopLeft, 0, 0),
            (Position::Top, 1, 0),
            (Position::TopRight, 2, 0),
            (Position::Left, 0, 1),
            (Position::Center, 1, 1),
            (Position::Right, 2, 1),
            (Position::BottomLeft, 0, 2),
            (Position::Bottom, 1, 2),
            (Position::BottomRight, 2, 2),
        ] {
            let changed = drawn(&image, &mark("Mark", position));
            assert!(!changed.is_empty(), "{position:?} drew nothing");
            assert!(
                changed.iter().all(|&(x, y)| x / 300 == column && y / 200 == row),
                "{position:?}: {:?}",
                bounds(&changed)
            );
        }
    }

    #[test]
    fn a_centred_mark_is_centred() {
        let changed = drawn(&flat(800, 600, 128), &mark("Watermark", Position::Center));
        let (x0, y0, x1, y1) = bounds(&changed);
        assert!(((x0 + x1) / 2).abs_diff(400) <= 4, "x {x0}..{x1}");
        assert!(((y0 + y1) / 2).abs_diff(300) <= 4, "y {y0}..{y1}");
    }

    #[test]
    fn offsets_move_the_mark_by_pixels_or_by_a_fraction_of_the_image() {
        let image = flat(800, 600, 128);
        let at = |offset_x: f32, offset_y: f32| {
            bounds(&drawn(
                &image,
                &Mark {
                    offset_x,
                    offset_y,
                    ..mark("Mark", Position::Center)
                },
            ))
        };
        let (x0, y0, ..) = at(0.0, 0.0);
        let (x1, y1, ..) = at(-50.0, 30.0);
        assert_eq!((x1 as i64 - x0 as i64, y1 as i64 - y0 as i64), (-50, 30));
        let (x2, y2, ..) = at(0.25, -0.1);
        assert_eq!((x2 as i64 - x0 as i64, y2 as i64 - y0 as i64), (200, -60));
    }

    #[test]
    fn a_character_the_fonts_lack_is_drawn_as_the_replacement_glyph() {
        let render = |text: &str| {
            let mut image = flat(800, 600, 128);
            draw(&mut image, &mark(text, Position::Center));
            image.data
        };
        // Neither bundled font has Egyptian hieroglyphs.
        let lacking = render("NWS 𓀀 mark");
        assert_eq!(lacking, render("NWS \u{FFFD} mark"), "drawn as U+FFFD");
        assert_ne!(lacking, render("NWS  mark"), "not dropped");
        assert_ne!(lacking, render("NWS ? mark"), "not a question mark");
    }

    #[test]
    fn chinese_japanese_and_korean_come_from_the_fallback_fonts() {
        let [sans, cjk, hangul] = faces(Font::Sans);
        for c in ['水', 'ひ', '한'] {
            assert_eq!(sans.glyph_id(c), GlyphId(0), "DejaVu has no {c}");
        }
        assert_ne!(cjk.glyph_id('水'), GlyphId(0));
        assert_ne!(cjk.glyph_id('ひ'), GlyphId(0));
        assert_ne!(hangul.glyph_id('한'), GlyphId(0));
        let render = |text: &str| {
            let mut image = flat(800, 600, 128);
            draw(&mut image, &mark(text, Position::Center));
            image.data
        };
        let cjk = render("水印 ひ 한");
        assert_ne!(cjk, render("\u{FFFD}\u{FFFD} \u{FFFD} \u{FFFD}"));
        assert_ne!(cjk, render("水印 ひ 국"), "each character has its own glyph");
    }

    #[test]
    fn the_three_fonts_draw_differently() {
        let render = |font: Font| {
            let mut image = flat(800, 600, 128);
            draw(
                &mut image,
                &Mark {
                    font,
                    ..mark("Quick brown fox", Position::Center)
                },
            );
            image.data
        };
        let (sans, serif, mono) = (render(Font::Sans), render(Font::Serif), render(Font::Mono));
        assert_ne!(sans, serif);
        assert_ne!(sans, mono);
        assert_ne!(serif, mono);
    }

    #[test]
    fn lines_stack_and_align_to_the_anchor_side() {
        let image = flat(800, 600, 128);
        let one = bounds(&drawn(&image, &mark("Wide first line", Position::TopLeft)));
        let two = bounds(&drawn(&image, &mark("Wide first line\nshort", Position::TopLeft)));
        let line_height = one.3 - one.1;
        assert_eq!((two.0, two.1), (one.0, one.1), "same top-left corner");
        assert!(
            two.3 - two.1 > line_height * 3 / 2,
            "a second line below: {one:?} {two:?}"
        );
        // Right-anchored: the short line ends where the wide one does.
        let right = drawn(&image, &mark("Wide first line\nshort", Position::TopRight));
        let (_, _, x1, _) = bounds(&right);
        let second_line: Vec<_> = right.iter().copied().filter(|p| p.1 > one.3 + 2).collect();
        assert!(bounds(&second_line).2.abs_diff(x1) <= 3, "right-aligned");
    }

    #[test]
    fn the_size_is_a_fraction_of_the_output_height() {
        let image = flat(800, 600, 128);
        let height = |text_size: f32| {
            let (_, y0, _, y1) = bounds(&drawn(
                &image,
                &Mark {
                    text_size,
                    ..mark("HH", Position::Center)
                },
            ));
            y1 - y0
        };
        let (small, large) = (height(0.05), height(0.2));
        assert!(large > 3 * small, "{small} {large}");
        // Capitals fill most of the em: 0.2 × 600 = 120 px.
        assert!((80..=130).contains(&large), "{large}");
    }

    #[test]
    fn a_fixed_colour_replaces_the_adaptive_ink_and_its_alpha_fades_it() {
        let mut image = flat(400, 200, 200);
        let red = Mark {
            color: Some([255, 0, 0, 255]),
            opacity: 1.0,
            ..mark("NWS", Position::Center)
        };
        assert_eq!(draw(&mut image, &red), Some(Ink::Fixed([255, 0, 0, 255])));
        assert!(
            image.data.chunks_exact(3).any(|p| p == [255, 0, 0]),
            "full-strength red pixels"
        );
        let mut faded = flat(400, 200, 200);
        draw(
            &mut faded,
            &Mark {
                color: Some([255, 0, 0, 128]),
                ..red
            },
        );
        let reddest = faded
            .data
            .chunks_exact(3)
            .map(|p| p[0] as i32 - p[1] as i32)
            .max()
            .unwrap();
        assert!((40..=140).contains(&reddest), "half-transparent red: {reddest}");
    }

    #[test]
    fn tiny_images_do_not_panic() {
        let mut tiny = flat(1, 1, 0);
        draw(&mut tiny, &mark("𓀀 ☃ ©", Position::Center));
        let mut strip = flat(1920, 1, 255);
        draw(&mut strip, &mark("NWS Watermark", Position::BottomLeft));
        let mut rotated = flat(3, 2, 0);
        draw(
            &mut rotated,
            &Mark {
                rotate: 45.0,
                tiled: true,
                ..mark("x\ny", Position::Center)
            },
        );
    }

    /// Which cells of a `cell`-pixel grid the mark left untouched.
    fn untouched_cells(before: &Pixels, after: &Pixels, cell: u32) -> Vec<(u32, u32)> {
        let changed = changed(before, after);
        let mut cells = Vec::new();
        for cy in 0..before.height / cell {
            for cx in 0..before.width / cell {
                if !changed.iter().any(|&(x, y)| x / cell == cx && y / cell == cy) {
                    cells.push((cx, cy));
                }
            }
        }
        cells
    }

    #[test]
    fn a_tiled_mark_covers_every_part_of_the_image_rotated_or_not() {
        let image = flat(1200, 800, 40);
        for rotate in [0.0, -30.0, 90.0] {
            let tiled = Mark {
                tiled: true,
                rotate,
                ..mark("NWS", Position::BottomRight)
            };
            let mut after = image.clone();
            draw(&mut after, &tiled);
            assert_eq!(untouched_cells(&image, &after, 200), vec![], "rotate {rotate}");
        }
    }

    #[test]
    fn spacing_spreads_the_tiles() {
        let image = flat(1200, 800, 40);
        let share = |spacing: f32| {
            let tiled = Mark {
                tiled: true,
                spacing,
                ..mark("NWS", Position::Center)
            };
            drawn(&image, &tiled).len()
        };
        let (dense, sparse) = (share(10.0), share(0.25));
        assert!(dense > 3 * sparse, "{dense} vs {sparse} changed pixels");
    }

    #[test]
    fn rotation_turns_the_mark_clockwise() {
        let image = flat(800, 800, 128);
        let level = bounds(&drawn(&image, &mark("A long line of text", Position::Center)));
        let upright = bounds(&drawn(
            &image,
            &Mark {
                rotate: 90.0,
                ..mark("A long line of text", Position::Center)
            },
        ));
        let (lw, lh) = (level.2 - level.0, level.3 - level.1);
        let (uw, uh) = (upright.2 - upright.0, upright.3 - upright.1);
        assert!(
            lw.abs_diff(uh) <= 6 && lh.abs_diff(uw) <= 6,
            "{level:?} {upright:?}"
        );
        // −30°: the text rises to the right, so its right end is higher.
        let diagonal = drawn(
            &image,
            &Mark {
                rotate: -30.0,
                ..mark("A long line of text", Position::Center)
            },
        );
        let (x0, _, x1, _) = bounds(&diagonal);
        let mean_y = |from: u32, to: u32| {
            let ys: Vec<u32> = diagonal
                .iter()
                .filter(|p| (from..to).contains(&p.0))
                .map(|p| p.1)
                .collect();
            ys.iter().sum::<u32>() / ys.len() as u32
        };
        let quarter = (x1 - x0) / 4;
        assert!(mean_y(x1 - quarter, x1) + 50 < mean_y(x0, x0 + quarter));
    }

    fn logo(width: u32, height: u32) -> Logo {
        // Opaque red in the middle, transparent around it.
        let data = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let inside = x >= width / 4 && x < width * 3 / 4 && y >= height / 4 && y < height * 3 / 4;
                if inside { [255, 0, 0, 255] } else { [0, 0, 255, 0] }
            })
            .collect();
        Pixels {
            width,
            height,
            channels: 4,
            data,
        }
    }

    #[test]
    fn an_image_mark_is_scaled_to_the_output_width_and_keeps_its_transparency() {
        let image = flat(1000, 500, 128);
        let logo = logo(200, 100);
        let mark = Mark {
            text: "",
            image: Some(&logo),
            image_scale: 0.4,
            opacity: 1.0,
            ..mark("", Position::TopLeft)
        };
        let mut after = image.clone();
        assert_eq!(draw(&mut after, &mark), None, "no text, no ink");
        // 0.4 × 1000 = 400 px wide, 200 high; only its opaque half is red:
        // 200×100 at (100, 50) inside it, inset by the margin (1000/50).
        // Enlarged, its edges blur a few pixels out, and no further.
        let red: Vec<(u32, u32)> = (0..500)
            .flat_map(|y| (0..1000).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let at = ((y * 1000 + x) * 3) as usize;
                after.data[at] > 192 && after.data[at + 1] < 64
            })
            .collect();
        let (x0, y0, x1, y1) = bounds(&red);
        let margin = 20;
        assert!(
            x0.abs_diff(margin + 100) <= 2 && y0.abs_diff(margin + 50) <= 2,
            "{x0},{y0} {x1},{y1}"
        );
        assert!(
            (x1 - x0).abs_diff(200) <= 4 && (y1 - y0).abs_diff(100) <= 4,
            "{x0},{y0} {x1},{y1}"
        );
        let (cx0, cy0, cx1, cy1) = bounds(&changed(&image, &after));
        assert!(cx0 + 10 >= x0 && cy0 + 10 >= y0 && cx1 <= x1 + 10 && cy1 <= y1 + 10);
        let centre = ((y0 + 50) * 1000 + x0 + 100) as usize * 3;
        assert_eq!(&after.data[centre..centre + 3], &[255, 0, 0]);
        // Transparent blue never tints the background.
        assert!(after.data.chunks_exact(3).all(|p| p[2] <= 128));
    }

    #[test]
    fn an_image_mark_with_text_puts_the_image_above_the_text() {
        let image = flat(1000, 500, 128);
        let logo = logo(100, 100);
        let both = Mark {
            text: "Below",
            image: Some(&logo),
            ..mark("Below", Position::BottomLeft)
        };
        let mut after = image.clone();
        draw(&mut after, &both);
        let red: Vec<(u32, u32)> = (0..500)
            .flat_map(|y| (0..1000).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let at = ((y * 1000 + x) * 3) as usize;
                after.data[at] > 200 && after.data[at + 1] < 100
            })
            .collect();
        let text_only = bounds(&drawn(&image, &mark("Below", Position::BottomLeft)));
        assert!(!red.is_empty());
        assert!(
            bounds(&red).3 < text_only.1,
            "logo {:?} above text {text_only:?}",
            bounds(&red)
        );
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

    #[test]
    fn tiles_cover_the_image_from_any_origin() {
        for origin in [(0, 0), (-37, 15), (500, 500)] {
            let places = tiles((300, 200), (50, 20), 10, origin);
            for (x, y) in &places {
                assert!(*x + 50 > 0 && *x < 300 && *y + 20 > 0 && *y < 200, "{origin:?}");
            }
            // Every pixel row is under some row of tiles (minus the gap).
            let ys: std::collections::BTreeSet<i64> = places.iter().map(|p| p.1).collect();
            let first = *ys.iter().next().unwrap();
            assert!(first <= 0 || first - 10 <= 0, "{origin:?}: first row at {first}");
        }
    }
}
