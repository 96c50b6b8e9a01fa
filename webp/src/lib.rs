//! Animated WebP encoding through libwebp's `WebPAnimEncoder`, one frame at
//! a time.
//!
//! The `webp` crate has an animation encoder too, but it keeps every frame
//! it is given until the end and only then encodes them all, so an
//! animation of N frames holds N decoded frames at once. libwebp itself
//! needs only the frame being added (it keeps the frames it has encoded and
//! one canvas), so this wrapper hands each frame over as it is made, and a
//! long animation costs the memory of one frame plus its output.
//!
//! With `nws-jpeg`, one of the two crates of the workspace with `unsafe`
//! code: the FFI calls, each with the invariant it relies on written next
//! to it.
#![deny(unsafe_op_in_unsafe_fn)]

use std::{
    ffi::{CStr, c_int},
    mem::MaybeUninit,
    ptr::{self, NonNull},
};

use libwebp_sys as sys;

/// What libwebp refused, in its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How the frames are encoded.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Lossy quality, 0 to 100.
    pub quality: f32,
    /// Effort, 0 (fastest) to 6 (slowest).
    pub method: i32,
    /// Times the animation plays; 0 means forever.
    pub loop_count: u16,
}

/// An animated WebP being written, frame by frame.
pub struct AnimEncoder {
    encoder: NonNull<sys::WebPAnimEncoder>,
    config: sys::WebPConfig,
    width: u32,
    height: u32,
    /// When the last frame added starts, in milliseconds.
    last_timestamp: u32,
    frames: u32,
}

impl AnimEncoder {
    /// An encoder for frames of `width`×`height` pixels.
    pub fn new(width: u32, height: u32, settings: &Settings) -> Result<Self, Error> {
        let side = |value: u32| {
            c_int::try_from(value)
                .ok()
                .filter(|side| (1..=16383).contains(side))
                .ok_or_else(|| Error(format!("a WebP canvas is 1 to 16383 pixels a side, not {value}")))
        };
        let (w, h) = (side(width)?, side(height)?);

        let mut options = MaybeUninit::<sys::WebPAnimEncoderOptions>::uninit();
        // SAFETY: the function fills every field of the struct it is given
        // (or returns 0 on an ABI mismatch, when nothing is read).
        let initialized = unsafe {
            sys::WebPAnimEncoderOptionsInitInternal(options.as_mut_ptr(), sys::WEBP_MUX_ABI_VERSION as c_int)
        };
        if initialized == 0 {
            return Err(Error("libwebp's mux ABI does not match its headers".into()));
        }
        // SAFETY: initialized just above.
        let mut options = unsafe { options.assume_init() };
        options.anim_params.loop_count = c_int::from(settings.loop_count);
        // Lossy frames only, so the quality asked for holds for each.
        options.allow_mixed = 0;

        let mut config = MaybeUninit::<sys::WebPConfig>::uninit();
        // SAFETY: as above: every field is written, or 0 is returned.
        let initialized = unsafe {
            sys::WebPConfigInitInternal(
                config.as_mut_ptr(),
                sys::WebPPreset::WEBP_PRESET_DEFAULT,
                // Any valid quality: it validates what it sets, and ours is
                // checked below, with a message that names it.
                75.0,
                sys::WEBP_ENCODER_ABI_VERSION as c_int,
            )
        };
        if initialized == 0 {
            return Err(Error("libwebp's encoder ABI does not match its headers".into()));
        }
        // SAFETY: initialized just above.
        let mut config = unsafe { config.assume_init() };
        config.quality = settings.quality;
        config.method = settings.method;
        // SAFETY: a fully initialized config, read only.
        if unsafe { sys::WebPValidateConfig(&config) } == 0 {
            return Err(Error(format!(
                "quality {} or method {} is out of libwebp's range",
                settings.quality, settings.method
            )));
        }

        // SAFETY: the options are initialized and only read; the sides are
        // in range. A null result means libwebp could not allocate.
        let encoder =
            unsafe { sys::WebPAnimEncoderNewInternal(w, h, &options, sys::WEBP_MUX_ABI_VERSION as c_int) };
        let encoder =
            NonNull::new(encoder).ok_or_else(|| Error("libwebp could not allocate an encoder".into()))?;
        Ok(Self {
            encoder,
            config,
            width,
            height,
            last_timestamp: 0,
            frames: 0,
        })
    }

    /// Adds a frame of interleaved 8-bit RGBA pixels, the encoder's size,
    /// shown from `timestamp_ms` (never before the previous frame's) until
    /// the next frame's, or the end given to [`AnimEncoder::finish`].
    pub fn add_rgba(&mut self, rgba: &[u8], timestamp_ms: u32) -> Result<(), Error> {
        let expected = self.width as usize * self.height as usize * 4;
        if rgba.len() != expected {
            return Err(Error(format!(
                "a {}×{} RGBA frame is {expected} bytes, not {}",
                self.width,
                self.height,
                rgba.len()
            )));
        }
        let timestamp = self.timestamp(timestamp_ms)?;

        let mut picture = MaybeUninit::<sys::WebPPicture>::uninit();
        // SAFETY: fills every field, or returns 0 on an ABI mismatch.
        if unsafe {
            sys::WebPPictureInitInternal(picture.as_mut_ptr(), sys::WEBP_ENCODER_ABI_VERSION as c_int)
        } == 0
        {
            return Err(Error("libwebp's encoder ABI does not match its headers".into()));
        }
        // SAFETY: initialized just above.
        let mut picture = unsafe { picture.assume_init() };
        picture.use_argb = 1;
        picture.width = self.width as c_int;
        picture.height = self.height as c_int;
        // SAFETY: `rgba` holds height rows of width × 4 bytes (checked
        // above), read only; the picture allocates and owns its copy.
        let imported =
            unsafe { sys::WebPPictureImportRGBA(&mut picture, rgba.as_ptr(), (self.width * 4) as c_int) };
        if imported == 0 {
            return Err(Error("libwebp could not allocate a frame".into()));
        }
        // SAFETY: the encoder is live; the picture was imported at the
        // encoder's size; the config was validated. The encoder copies what
        // it keeps, so the picture is freed right after, whatever happened.
        let added =
            unsafe { sys::WebPAnimEncoderAdd(self.encoder.as_ptr(), &mut picture, timestamp, &self.config) };
        // SAFETY: the picture owns its buffers (imported above); freed once.
        unsafe { sys::WebPPictureFree(&mut picture) };
        if added == 0 {
            return Err(self.error("adding a frame"));
        }
        self.last_timestamp = timestamp_ms;
        self.frames += 1;
        Ok(())
    }

    /// Frames added so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Ends the animation at `end_ms` (when the last frame stops showing)
    /// and returns the WebP file.
    pub fn finish(self, end_ms: u32) -> Result<Vec<u8>, Error> {
        let end = self.timestamp(end_ms)?;
        // SAFETY: the encoder is live; a null frame marks the end.
        if unsafe { sys::WebPAnimEncoderAdd(self.encoder.as_ptr(), ptr::null_mut(), end, ptr::null()) } == 0 {
            return Err(self.error("ending the animation"));
        }
        let mut data = sys::WebPData::default();
        // SAFETY: the encoder is live; `data` is an empty WebPData that
        // libwebp fills with a buffer it allocates.
        if unsafe { sys::WebPAnimEncoderAssemble(self.encoder.as_ptr(), &mut data) } == 0 {
            return Err(self.error("assembling the file"));
        }
        // SAFETY: on success `data` points at `size` bytes libwebp owns
        // until WebPDataClear; they are copied before it is called.
        let bytes = unsafe { std::slice::from_raw_parts(data.bytes, data.size) }.to_vec();
        // SAFETY: frees the buffer Assemble allocated, once.
        unsafe { sys::WebPDataClear(&mut data) };
        Ok(bytes)
    }

    fn timestamp(&self, ms: u32) -> Result<c_int, Error> {
        if ms < self.last_timestamp {
            return Err(Error(format!(
                "a frame at {ms} ms comes before the previous one, at {} ms",
                self.last_timestamp
            )));
        }
        c_int::try_from(ms).map_err(|_| Error(format!("an animation {ms} ms long is too long for WebP")))
    }

    fn error(&self, doing: &str) -> Error {
        // SAFETY: the encoder is live; the message it returns is a
        // NUL-terminated string it owns, copied at once.
        let message = unsafe { sys::WebPAnimEncoderGetError(self.encoder.as_ptr()) };
        let message = if message.is_null() {
            "no detail".into()
        } else {
            // SAFETY: non-null, NUL-terminated, alive until the next call.
            unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
        };
        Error(format!("libwebp failed {doing}: {message}"))
    }
}

impl std::fmt::Debug for AnimEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnimEncoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frames", &self.frames)
            .field("last_timestamp", &self.last_timestamp)
            .finish_non_exhaustive()
    }
}

impl Drop for AnimEncoder {
    fn drop(&mut self) {
        // SAFETY: created by WebPAnimEncoderNewInternal, deleted once.
        unsafe { sys::WebPAnimEncoderDelete(self.encoder.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::{AnimationDecoder as _, codecs::webp::WebPDecoder};

    use super::*;

    const SETTINGS: Settings = Settings {
        quality: 80.0,
        method: 2,
        loop_count: 3,
    };

    /// A frame of one colour.
    fn plain(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
        rgba.repeat(width as usize * height as usize)
    }

    #[test]
    fn frames_come_back_with_their_colours_durations_and_loop_count() {
        let colours = [[220, 30, 30, 255], [30, 200, 40, 255], [20, 40, 230, 255]];
        let mut encoder = AnimEncoder::new(40, 24, &SETTINGS).unwrap();
        for (i, colour) in colours.iter().enumerate() {
            encoder.add_rgba(&plain(40, 24, *colour), i as u32 * 100).unwrap();
        }
        assert_eq!(encoder.frames(), 3);
        let webp = encoder.finish(500).unwrap();

        let decoder = WebPDecoder::new(Cursor::new(&webp)).unwrap();
        assert!(decoder.has_animation());
        assert!(matches!(
            image::AnimationDecoder::loop_count(&decoder),
            image::metadata::LoopCount::Finite(n) if n.get() == 3
        ));
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 3);
        let durations: Vec<u32> = frames
            .iter()
            .map(|frame| {
                let (numer, denom) = frame.delay().numer_denom_ms();
                numer / denom
            })
            .collect();
        assert_eq!(durations, [100, 100, 300]);
        for (frame, colour) in frames.iter().zip(colours) {
            assert_eq!(frame.buffer().dimensions(), (40, 24));
            let pixel = frame.buffer().get_pixel(20, 12).0;
            for channel in 0..3 {
                let off = i32::from(pixel[channel]) - i32::from(colour[channel]);
                assert!(off.abs() <= 12, "{pixel:?} is not {colour:?}");
            }
        }
    }

    #[test]
    fn transparency_is_kept() {
        let mut encoder = AnimEncoder::new(16, 16, &SETTINGS).unwrap();
        encoder.add_rgba(&plain(16, 16, [0, 0, 0, 0]), 0).unwrap();
        encoder
            .add_rgba(&plain(16, 16, [255, 255, 255, 255]), 50)
            .unwrap();
        let webp = encoder.finish(100).unwrap();
        let frames = WebPDecoder::new(Cursor::new(&webp))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap();
        assert_eq!(frames[0].buffer().get_pixel(8, 8).0[3], 0);
        assert_eq!(frames[1].buffer().get_pixel(8, 8).0[3], 255);
    }

    #[test]
    fn wrong_sizes_and_times_are_refused_with_a_reason() {
        assert!(
            AnimEncoder::new(0, 10, &SETTINGS)
                .unwrap_err()
                .0
                .contains("not 0")
        );
        assert!(AnimEncoder::new(20_000, 10, &SETTINGS).is_err());
        let bad_quality = Settings {
            quality: 150.0,
            ..SETTINGS
        };
        assert!(
            AnimEncoder::new(8, 8, &bad_quality)
                .unwrap_err()
                .0
                .contains("quality 150")
        );

        let mut encoder = AnimEncoder::new(8, 8, &SETTINGS).unwrap();
        let short = encoder.add_rgba(&[0; 10], 0).unwrap_err();
        assert_eq!(short.0, "a 8×8 RGBA frame is 256 bytes, not 10");
        encoder.add_rgba(&plain(8, 8, [1, 2, 3, 255]), 100).unwrap();
        let early = encoder.add_rgba(&plain(8, 8, [1, 2, 3, 255]), 50).unwrap_err();
        assert!(early.0.contains("before the previous one"), "{early}");
        assert!(encoder.finish(40).is_err());
    }
}
