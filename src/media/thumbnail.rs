//! Image dimensions and server-made thumbnails: a small JPEG (longest side
//! `thumbnail_max_side`), base64 so it can go straight into a message's
//! `Media.thumbnail_base64`. Decoding is bounded (`image::Limits`), so a tiny file
//! claiming a huge canvas is refused instead of exhausting memory.

use std::io::{BufReader, Cursor};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageReader, Limits};

/// Largest image side accepted for decoding, pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Most memory a decode may allocate, bytes.
pub const MAX_DECODE_ALLOC: u64 = 512 << 20;
/// JPEG quality of thumbnails.
const QUALITY: u8 = 70;

/// An image's size and its thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// The thumbnail JPEG, standard base64 with padding.
    pub thumbnail_base64: String,
}

/// Reads the image at `path`: its dimensions and a thumbnail of at most `max_side`
/// pixels a side. Blocking (run it on a blocking thread). An error means the bytes
/// are not a decodable image (or are over the limits).
pub fn probe(path: &Path, max_side: u32) -> Result<Probe, image::ImageError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let file = std::fs::File::open(path).map_err(image::ImageError::IoError)?;
    let mut reader = ImageReader::new(BufReader::new(file)).with_guessed_format()?;
    reader.limits(limits);
    let image = reader.decode()?;
    let (width, height) = (image.width(), image.height());
    // Shrink only: a small picture is its own thumbnail.
    let small = if width.max(height) > max_side {
        image.thumbnail(max_side, max_side).into_rgb8()
    } else {
        image.into_rgb8()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), QUALITY).encode_image(&small)?;
    Ok(Probe {
        width,
        height,
        thumbnail_base64: STANDARD.encode(&jpeg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_gets_its_dimensions_and_a_small_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        image::RgbaImage::from_pixel(640, 320, image::Rgba([200, 10, 10, 255]))
            .save_with_format(&path, image::ImageFormat::Png)
            .unwrap();
        let p = probe(&path, 160).unwrap();
        assert_eq!((p.width, p.height), (640, 320));
        let jpeg = STANDARD.decode(&p.thumbnail_base64).unwrap();
        assert_eq!(&jpeg[..3], b"\xff\xd8\xff");
        let thumb = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (160, 80));
        image::RgbImage::new(20, 10)
            .save_with_format(&path, image::ImageFormat::Png)
            .unwrap();
        let p = probe(&path, 160).unwrap();
        let thumb =
            image::load_from_memory(&STANDARD.decode(&p.thumbnail_base64).unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (20, 10), "never enlarged");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nbroken").unwrap();
        assert!(probe(&path, 160).is_err());
    }
}
