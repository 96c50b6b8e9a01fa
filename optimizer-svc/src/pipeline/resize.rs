//! Fitting an image inside a box: aspect ratio kept, never enlarged.

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use nws_watermark::pb::ResizeFilter;

use super::Pixels;

/// The largest size with `width`×`height`'s aspect ratio that fits inside
/// `max_width`×`max_height`, never larger than the original, never 0.
pub fn fit_within(width: u32, height: u32, max_width: u32, max_height: u32) -> (u32, u32) {
    if width <= max_width && height <= max_height {
        return (width, height);
    }
    let scale = f64::min(
        f64::from(max_width) / f64::from(width),
        f64::from(max_height) / f64::from(height),
    );
    let scaled = |side: u32, max: u32| ((f64::from(side) * scale).round() as u32).clamp(1, max);
    (scaled(width, max_width), scaled(height, max_height))
}

/// Resamples `pixels` to `width`×`height` (SIMD): Lanczos3, or bilinear when
/// speed matters more; alpha is premultiplied during resampling so edges
/// don't darken.
pub fn resize(pixels: Pixels, width: u32, height: u32, filter: ResizeFilter) -> anyhow::Result<Pixels> {
    if (pixels.width, pixels.height) == (width, height) {
        return Ok(pixels);
    }
    let pixel_type = match pixels.channels {
        1 => PixelType::U8,
        4 => PixelType::U8x4,
        _ => PixelType::U8x3,
    };
    let source = Image::from_vec_u8(pixels.width, pixels.height, pixels.data, pixel_type)?;
    let target_len = width as usize * height as usize * usize::from(pixels.channels);
    let mut target = Image::from_vec_u8(width, height, super::buffers::take(target_len), pixel_type)?;
    Resizer::new().resize(
        &source,
        &mut target,
        &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(match filter {
            ResizeFilter::Fast => FilterType::Bilinear,
            ResizeFilter::Lanczos3 | ResizeFilter::Unspecified => FilterType::Lanczos3,
        })),
    )?;
    super::buffers::give_back(source.into_vec());
    Ok(Pixels {
        width,
        height,
        channels: pixels.channels,
        data: target.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A horizontal ramp, opaque: each pixel's value is its column's.
    fn ramp(width: u32, height: u32, channels: u8) -> Pixels {
        let data = (0..height)
            .flat_map(|_| {
                (0..width).flat_map(move |x| {
                    let value = (x * 255 / (width - 1)) as u8;
                    [value, value, value, 255].into_iter().take(usize::from(channels))
                })
            })
            .collect();
        Pixels {
            width,
            height,
            channels,
            data,
        }
    }

    #[test]
    fn resamples_to_the_size_asked_keeping_the_picture() {
        for channels in [1, 3, 4] {
            for filter in [ResizeFilter::Lanczos3, ResizeFilter::Fast] {
                let resized = resize(ramp(64, 32, channels), 16, 8, filter).unwrap();
                assert_eq!(
                    (resized.width, resized.height, resized.channels),
                    (16, 8, channels)
                );
                assert_eq!(resized.data.len(), 16 * 8 * usize::from(channels));
                // Still a ramp from dark on the left to light on the right.
                let row: Vec<u8> = resized.data[..16 * usize::from(channels)]
                    .chunks_exact(usize::from(channels))
                    .map(|pixel| pixel[0])
                    .collect();
                assert!(row[0] < 20 && row[15] > 235, "{channels} {filter:?}: {row:?}");
                assert!(row.windows(2).all(|pair| pair[0] <= pair[1]), "{row:?}");
            }
        }
    }

    #[test]
    fn the_same_size_is_the_same_pixels() {
        let pixels = ramp(8, 4, 3);
        let same = resize(pixels.clone(), 8, 4, ResizeFilter::Lanczos3).unwrap();
        assert_eq!((same.width, same.height, same.data), (8, 4, pixels.data));
        let narrower = resize(ramp(8, 4, 3), 4, 4, ResizeFilter::Fast).unwrap();
        assert_eq!((narrower.width, narrower.height), (4, 4));
    }

    #[test]
    fn fits_the_box_keeping_the_ratio_and_never_enlarges() {
        assert_eq!(fit_within(4000, 3000, 1920, 1080), (1440, 1080));
        assert_eq!(fit_within(3000, 4000, 1920, 1080), (810, 1080));
        assert_eq!(fit_within(30000, 10, 1920, 1080), (1920, 1));
        assert_eq!(fit_within(16, 16, 1920, 1080), (16, 16));
        assert_eq!(fit_within(1920, 1080, 1920, 1080), (1920, 1080));
        assert_eq!(fit_within(1921, 1080, 1920, 1080), (1920, 1079));
        assert_eq!(fit_within(1920, 1081, 1920, 1080), (1918, 1080));
        assert_eq!(fit_within(100, 5000, 640, 480), (10, 480));
    }
}
