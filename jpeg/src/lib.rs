//! JPEG decoding through libjpeg-turbo's TurboJPEG 3 API, with the one thing
//! the `turbojpeg` crate cannot say: whether a failure was a *warning*.
//!
//! libjpeg decodes through many kinds of damage that cameras, editors and
//! old software leave behind (junk bytes before a marker, an unknown Adobe
//! transform code, a corrupt ICC chunk) and reports each as a warning after
//! producing the whole image, as every viewer shows it. TurboJPEG returns
//! `-1` for those too, and only `tj3GetErrorCode` tells them from real
//! errors; the `turbojpeg` crate folds both into one error. This crate is
//! the small safe wrapper that keeps them apart, and also sets the limits
//! libjpeg offers against hostile files (memory, progressive scans).
//!
//! It is the one crate of the workspace with `unsafe` code: the FFI calls,
//! each with the invariant it relies on written next to it.
#![deny(unsafe_op_in_unsafe_fn)]

use std::{
    ffi::{CStr, c_int},
    ptr::NonNull,
};

use turbojpeg::raw;

/// Ceilings libjpeg enforces while it reads a file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory libjpeg may take for its own buffers (coefficients of a
    /// progressive image, mostly), in MiB.
    pub max_memory_mib: u32,
    /// Most scans a progressive JPEG may have: each costs a pass over the
    /// whole image, so thousands of tiny scans are a CPU bomb.
    pub max_scans: u32,
}

/// What a JPEG's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub colorspace: Colorspace,
    /// The ICC profile, reassembled from its APP2 chunks wherever they
    /// stand before the first scan.
    pub icc_profile: Option<Vec<u8>>,
}

/// The colour space of the JPEG's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colorspace {
    Rgb,
    YCbCr,
    Gray,
    Cmyk,
    Ycck,
}

/// The pixels a decode writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Samples {
    /// Packed RGB, three bytes a pixel.
    Rgb,
    /// One byte a pixel: the samples of a greyscale JPEG as they are (the
    /// luma of a colour one).
    Gray,
}

impl Samples {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Samples::Rgb => 3,
            Samples::Gray => 1,
        }
    }
}

impl Colorspace {
    /// Whether libjpeg can turn its samples into RGB (not CMYK or YCCK).
    pub fn decodes_to_rgb(self) -> bool {
        matches!(self, Colorspace::Rgb | Colorspace::YCbCr | Colorspace::Gray)
    }
}

/// A decode that libjpeg could not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A step that succeeded, with the warning libjpeg raised on the way, if any
/// (the last one, when there were several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    pub value: T,
    pub warning: Option<String>,
}

/// A downscale applied while decoding, in the DCT domain: `eighths/8` of
/// each side. libjpeg-turbo decodes to every M/8 (M = 1..16); the ones up to
/// full size are the useful ones here, since enlarging is never asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scale {
    eighths: u8,
}

impl Scale {
    pub const FULL: Scale = Scale { eighths: 8 };

    /// Every scale libjpeg-turbo decodes to at or below full size, smallest
    /// first: 1/8, 2/8, …, 8/8.
    pub const ALL: [Scale; 8] = {
        let mut all = [Scale::FULL; 8];
        let mut i = 0;
        while i < 8 {
            all[i] = Scale { eighths: i as u8 + 1 };
            i += 1;
        }
        all
    };

    /// `eighths/8`, for `eighths` in 1..=8.
    pub const fn from_eighths(eighths: u8) -> Option<Scale> {
        match eighths {
            1..=8 => Some(Scale { eighths }),
            _ => None,
        }
    }

    pub fn eighths(self) -> u8 {
        self.eighths
    }

    /// The scale as the reduced fraction TurboJPEG's table lists (6/8 is
    /// `3/4` there, and it refuses any other spelling).
    pub fn fraction(self) -> (u8, u8) {
        let divisor = gcd(self.eighths, 8);
        (self.eighths / divisor, 8 / divisor)
    }

    /// A side's length at this scale, `ceil(side × M / 8)`, exactly as
    /// libjpeg computes its output size (`jpeg_calc_output_dimensions`).
    pub fn apply(self, side: u32) -> u32 {
        let scaled = (u64::from(side) * u64::from(self.eighths)).div_ceil(8);
        // At most `side`: M ≤ 8.
        scaled as u32
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (numerator, denominator) = self.fraction();
        write!(f, "{numerator}/{denominator}")
    }
}

const fn gcd(a: u8, b: u8) -> u8 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One TurboJPEG decompressor; reuse it for several images on one thread.
pub struct Decompressor {
    handle: NonNull<std::ffi::c_void>,
}

// SAFETY: a TurboJPEG instance has no thread affinity; it must only not be
// used from two threads at once, which `&mut self` on every call ensures.
unsafe impl Send for Decompressor {}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once, here.
        unsafe { raw::tj3Destroy(self.handle.as_ptr()) }
    }
}

impl Decompressor {
    pub fn new(limits: Limits) -> Result<Self, Error> {
        // SAFETY: tj3Init takes an init type and returns a new handle or null.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        let handle = NonNull::new(handle).ok_or_else(|| Error(global_error()))?;
        let mut decompressor = Self { handle };
        decompressor.set(raw::TJPARAM_TJPARAM_MAXMEMORY, limits.max_memory_mib)?;
        decompressor.set(raw::TJPARAM_TJPARAM_SCANLIMIT, limits.max_scans)?;
        // Warnings never stop a decode: they are reported with its result.
        decompressor.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 0)?;
        Ok(decompressor)
    }

    /// Reads the header (and the ICC profile) without decoding any pixel.
    pub fn read_header(&mut self, jpeg: &[u8]) -> Result<Decoded<Header>, Error> {
        // SAFETY: the buffer is valid for `jpeg.len()` bytes for the call.
        let status = unsafe {
            raw::tj3DecompressHeader(self.handle.as_ptr(), jpeg.as_ptr(), jpeg.len() as raw::size_t)
        };
        let warning = self.outcome(status)?;
        let width = self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
        let colorspace = match self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS {
            raw::TJCS_TJCS_RGB => Colorspace::Rgb,
            raw::TJCS_TJCS_YCbCr => Colorspace::YCbCr,
            raw::TJCS_TJCS_GRAY => Colorspace::Gray,
            raw::TJCS_TJCS_CMYK => Colorspace::Cmyk,
            raw::TJCS_TJCS_YCCK => Colorspace::Ycck,
            other => return Err(Error(format!("unknown JPEG colour space {other}"))),
        };
        let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
            return Err(Error(format!("the header claims a {width}×{height} image")));
        };
        let icc_profile = self.icc_profile();
        Ok(Decoded {
            value: Header {
                width,
                height,
                colorspace,
                icc_profile,
            },
            warning,
        })
    }

    /// Decodes `jpeg` at `scale` into `out` as packed `samples`, `width`
    /// pixels a row, where `width`×`height` is the header's size at that
    /// scale. Fails for the colour spaces libjpeg cannot turn into RGB.
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        scale: Scale,
        samples: Samples,
        out: &mut [u8],
    ) -> Result<Decoded<(u32, u32)>, Error> {
        let header = self.read_header(jpeg)?.value;
        if !header.colorspace.decodes_to_rgb() {
            return Err(Error(format!(
                "{:?} samples cannot be decoded to RGB",
                header.colorspace
            )));
        }
        let (width, height) = (scale.apply(header.width), scale.apply(header.height));
        let pitch = width as usize * samples.bytes_per_pixel();
        if out.len() < pitch * height as usize {
            return Err(Error(format!(
                "the output buffer holds {} bytes, not the {} of a {width}×{height} {samples:?} image",
                out.len(),
                pitch * height as usize
            )));
        }
        let (num, denom) = scale.fraction();
        let factor = raw::tjscalingfactor {
            num: c_int::from(num),
            denom: c_int::from(denom),
        };
        // SAFETY: plain value argument on a valid handle.
        let status = unsafe { raw::tj3SetScalingFactor(self.handle.as_ptr(), factor) };
        self.outcome(status)?;
        let pitch_c = c_int::try_from(pitch).map_err(|_| Error("the image is too wide".into()))?;
        // SAFETY: `jpeg` is valid for its length; `out` holds at least
        // `pitch * height` bytes (checked above), which is what libjpeg
        // writes for this header at this scaling factor, `pitch` a row.
        let status = unsafe {
            raw::tj3Decompress8(
                self.handle.as_ptr(),
                jpeg.as_ptr(),
                jpeg.len() as raw::size_t,
                out.as_mut_ptr(),
                pitch_c,
                match samples {
                    Samples::Rgb => raw::TJPF_TJPF_RGB,
                    Samples::Gray => raw::TJPF_TJPF_GRAY,
                },
            )
        };
        let warning = self.outcome(status)?;
        Ok(Decoded {
            value: (width, height),
            warning,
        })
    }

    /// `Ok(None)` for success, `Ok(Some(warning))` for a warning, `Err` for
    /// an error.
    fn outcome(&mut self, status: c_int) -> Result<Option<String>, Error> {
        if status == 0 {
            return Ok(None);
        }
        let message = self.error_message();
        // SAFETY: valid handle.
        let code = unsafe { raw::tj3GetErrorCode(self.handle.as_ptr()) };
        if code as raw::TJERR == raw::TJERR_TJERR_WARNING {
            Ok(Some(message))
        } else {
            Err(Error(message))
        }
    }

    fn icc_profile(&mut self) -> Option<Vec<u8>> {
        let mut buffer: *mut u8 = std::ptr::null_mut();
        let mut size: raw::size_t = 0;
        // SAFETY: both out-pointers are valid for writes; on success the
        // buffer is ours to free with tj3Free.
        let status = unsafe { raw::tj3GetICCProfile(self.handle.as_ptr(), &mut buffer, &mut size) };
        if status != 0 || buffer.is_null() {
            return None;
        }
        // SAFETY: TurboJPEG allocated `size` bytes at `buffer`.
        let profile = unsafe { std::slice::from_raw_parts(buffer, size as usize) }.to_vec();
        // SAFETY: allocated by TurboJPEG, freed once.
        unsafe { raw::tj3Free(buffer.cast()) };
        (!profile.is_empty()).then_some(profile)
    }

    fn set(&mut self, parameter: raw::TJPARAM, value: u32) -> Result<(), Error> {
        let value = c_int::try_from(value).unwrap_or(c_int::MAX);
        // SAFETY: valid handle; the parameter is one of the enum's values.
        let status = unsafe { raw::tj3Set(self.handle.as_ptr(), parameter as c_int, value) };
        if status == 0 {
            Ok(())
        } else {
            Err(Error(self.error_message()))
        }
    }

    fn get(&mut self, parameter: raw::TJPARAM) -> c_int {
        // SAFETY: valid handle; the parameter is one of the enum's values.
        unsafe { raw::tj3Get(self.handle.as_ptr(), parameter as c_int) }
    }

    fn error_message(&mut self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by
        // the instance, valid until its next call; it is copied at once.
        unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle.as_ptr())) }
            .to_string_lossy()
            .into_owned()
    }
}

fn global_error() -> String {
    // SAFETY: with a null handle, the thread's last global error message.
    unsafe { CStr::from_ptr(raw::tj3GetErrorStr(std::ptr::null_mut())) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_memory_mib: 256,
        max_scans: 500,
    };

    /// A 32×16 JPEG made by libjpeg-turbo itself: left half red, right blue.
    fn sample() -> Vec<u8> {
        compress(false)
    }

    fn compress(progressive: bool) -> Vec<u8> {
        compress_rgb(32, 16, progressive, |x, _y| {
            if x < 16 { [220, 20, 20] } else { [20, 20, 220] }
        })
    }

    fn compress_rgb(
        width: usize,
        height: usize,
        progressive: bool,
        pixel: impl Fn(usize, usize) -> [u8; 3],
    ) -> Vec<u8> {
        let rgb: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .flat_map(|(x, y)| pixel(x, y))
            .collect();
        let mut compressor = turbojpeg::Compressor::new().unwrap();
        compressor.set_quality(90).unwrap();
        compressor.set_progressive(progressive).unwrap();
        compressor
            .compress_to_vec(turbojpeg::Image {
                pixels: rgb.as_slice(),
                width,
                pitch: width * 3,
                height,
                format: turbojpeg::PixelFormat::RGB,
            })
            .unwrap()
    }

    #[test]
    fn the_scales_are_every_factor_turbojpeg_offers_up_to_full_size() {
        let mut count: c_int = 0;
        // SAFETY: returns a pointer to TurboJPEG's static table of `count`
        // factors (never freed), or null on failure.
        let table = unsafe { raw::tj3GetScalingFactors(&mut count) };
        assert!(!table.is_null());
        // SAFETY: `count` entries live at `table` for the program's life.
        let offered = unsafe { std::slice::from_raw_parts(table, count as usize) };
        let mut up_to_full: Vec<(c_int, c_int)> = offered
            .iter()
            .filter(|factor| factor.num <= factor.denom)
            .map(|factor| (factor.num, factor.denom))
            .collect();
        up_to_full.sort_by_key(|&(num, denom)| num * 8 / denom);
        let ours: Vec<(c_int, c_int)> = Scale::ALL
            .iter()
            .map(|scale| scale.fraction())
            .map(|(num, denom)| (c_int::from(num), c_int::from(denom)))
            .collect();
        assert_eq!(ours, up_to_full);
        assert_eq!(Scale::from_eighths(6).unwrap().to_string(), "3/4");
        assert_eq!(Scale::from_eighths(0), None);
        assert_eq!(Scale::from_eighths(9), None);
    }

    #[test]
    fn sides_scale_to_ceil_of_side_times_m_over_8() {
        let five = Scale::from_eighths(5).unwrap();
        assert_eq!((five.apply(3088), five.apply(2056)), (1930, 1285));
        let three = Scale::from_eighths(3).unwrap();
        assert_eq!((three.apply(4000), three.apply(3000)), (1500, 1125));
        assert_eq!(Scale::from_eighths(1).unwrap().apply(1), 1);
        assert_eq!(Scale::FULL.apply(u32::MAX), u32::MAX);
        assert_eq!(Scale::from_eighths(7).unwrap().apply(9), 8);
    }

    /// libjpeg writes exactly `apply(width)`×`apply(height)` pixels at every
    /// scale: not a byte past them (a sentinel after the image stays), and
    /// none of them left out (no sentinel pixel inside).
    #[test]
    fn decoded_sizes_are_what_apply_says_at_every_scale() {
        const SENTINEL: u8 = 0xAB;
        for (width, height) in [(37, 23), (1, 1), (9, 17), (64, 40)] {
            let jpeg = compress_rgb(width, height, false, |_, _| [200, 90, 40]);
            let mut decompressor = Decompressor::new(LIMITS).unwrap();
            for scale in Scale::ALL {
                let mut out = vec![SENTINEL; width * height * 3 + 64];
                let decoded = decompressor.decode(&jpeg, scale, Samples::Rgb, &mut out).unwrap();
                let (w, h) = (scale.apply(width as u32), scale.apply(height as u32));
                assert_eq!(decoded.value, (w, h), "{width}×{height} at {scale}");
                let len = w as usize * h as usize * 3;
                assert!(
                    out[len..].iter().all(|&b| b == SENTINEL),
                    "{width}×{height} at {scale}: written past the image"
                );
                for pixel in out[..len].chunks_exact(3) {
                    assert!(
                        pixel[0] > 150 && pixel[2] < 100,
                        "{width}×{height} at {scale}: a pixel not decoded: {pixel:?}"
                    );
                }
            }
        }
    }

    /// Inserts `bytes` just before the first marker `marker` (e.g. 0xDB, DQT).
    fn insert_before_marker(jpeg: &[u8], marker: u8, bytes: &[u8]) -> Vec<u8> {
        let at = jpeg
            .windows(2)
            .position(|w| w == [0xFF, marker])
            .expect("the marker");
        [&jpeg[..at], bytes, &jpeg[at..]].concat()
    }

    #[test]
    fn a_clean_file_decodes_without_warning_at_every_scale() {
        let jpeg = sample();
        let mut decompressor = Decompressor::new(LIMITS).unwrap();
        let header = decompressor.read_header(&jpeg).unwrap();
        assert_eq!(header.warning, None);
        assert_eq!((header.value.width, header.value.height), (32, 16));
        for scale in Scale::ALL {
            let mut out = vec![0; 32 * 16 * 3];
            let decoded = decompressor.decode(&jpeg, scale, Samples::Rgb, &mut out).unwrap();
            assert_eq!(decoded.value, (scale.apply(32), scale.apply(16)));
            assert_eq!(decoded.warning, None);
            assert!(out[0] > 150 && out[2] < 80, "red on the left: {:?}", &out[..3]);
        }
    }

    #[test]
    fn junk_before_a_marker_is_a_warning_and_the_image_decodes() {
        let jpeg = insert_before_marker(&sample(), 0xDB, &[0x00, 0x13, 0x37]);
        let mut decompressor = Decompressor::new(LIMITS).unwrap();
        let mut out = vec![0; 32 * 16 * 3];
        let decoded = decompressor
            .decode(&jpeg, Scale::FULL, Samples::Rgb, &mut out)
            .unwrap();
        let warning = decoded.warning.expect("libjpeg warns");
        assert!(warning.contains("extraneous bytes before marker"), "{warning}");
        // The last row is there too: red then blue, not grey fill.
        let last_row = &out[15 * 96..];
        assert!(last_row[0] > 150 && last_row[2] < 80, "{:?}", &last_row[..3]);
        assert!(last_row[95] > 150 && last_row[93] < 80, "{:?}", &last_row[93..]);
    }

    #[test]
    fn the_scan_limit_refuses_progressive_files_with_more_scans() {
        let progressive = compress(true);
        let mut out = vec![0; 32 * 16 * 3];
        let mut strict = Decompressor::new(Limits {
            max_scans: 2,
            ..LIMITS
        })
        .unwrap();
        let error = strict
            .decode(&progressive, Scale::FULL, Samples::Rgb, &mut out)
            .unwrap_err();
        assert!(error.0.contains("scans"), "{error}");
        let mut usual = Decompressor::new(LIMITS).unwrap();
        assert!(
            usual
                .decode(&progressive, Scale::FULL, Samples::Rgb, &mut out)
                .is_ok()
        );
    }

    /// A greyscale JPEG decodes to one byte a pixel, the same values an RGB
    /// decode repeats three times, at every scale.
    #[test]
    fn grey_samples_are_the_rgb_decode_of_a_grey_jpeg_one_channel_wide() {
        let grey: Vec<u8> = (0..40 * 24).map(|i| (i * 7 % 256) as u8).collect();
        let mut compressor = turbojpeg::Compressor::new().unwrap();
        compressor.set_subsamp(turbojpeg::Subsamp::Gray).unwrap();
        let jpeg = compressor
            .compress_to_vec(turbojpeg::Image {
                pixels: grey.as_slice(),
                width: 40,
                pitch: 40,
                height: 24,
                format: turbojpeg::PixelFormat::GRAY,
            })
            .unwrap();
        let mut decompressor = Decompressor::new(LIMITS).unwrap();
        assert_eq!(
            decompressor.read_header(&jpeg).unwrap().value.colorspace,
            Colorspace::Gray
        );
        for scale in Scale::ALL {
            let (w, h) = (scale.apply(40) as usize, scale.apply(24) as usize);
            let mut one = vec![0; w * h];
            let mut three = vec![0; w * h * 3];
            let decoded = decompressor
                .decode(&jpeg, scale, Samples::Gray, &mut one)
                .unwrap();
            assert_eq!(decoded.value, (w as u32, h as u32));
            decompressor
                .decode(&jpeg, scale, Samples::Rgb, &mut three)
                .unwrap();
            let expanded: Vec<u8> = one.iter().flat_map(|&v| [v, v, v]).collect();
            assert!(expanded == three, "at {scale}");
        }
        let mut short = vec![0; 40 * 24 - 1];
        let error = decompressor
            .decode(&jpeg, Scale::FULL, Samples::Gray, &mut short)
            .unwrap_err();
        assert!(error.0.contains("Gray image"), "{error}");
    }

    #[test]
    fn real_errors_stay_errors() {
        let mut decompressor = Decompressor::new(LIMITS).unwrap();
        let mut out = vec![0; 32 * 16 * 3];
        assert!(
            decompressor
                .decode(
                    b"\xFF\xD8\xFF\xE0 not a jpeg",
                    Scale::FULL,
                    Samples::Rgb,
                    &mut out
                )
                .is_err()
        );
        // A buffer too small is refused before libjpeg writes into it.
        let mut small = vec![0; 10];
        let error = decompressor
            .decode(&sample(), Scale::FULL, Samples::Rgb, &mut small)
            .unwrap_err();
        assert!(error.0.contains("output buffer"), "{error}");
    }
}
