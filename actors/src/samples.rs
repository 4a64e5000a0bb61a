//! Synthetic inputs: seeded images, and the bad inputs ferry must
//! dead-letter (a decompression bomb, bytes that are no image).

/// A seeded synthetic PNG of `side`×`side` pixels: gradients and rings, so
/// every image differs and compresses like a photo-ish picture would not.
pub fn synthetic_png(seed: u64, side: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (cx, cy) = ((next() % side as u64) as f32, (next() % side as u64) as f32);
    let freq = 0.05 + (next() % 100) as f32 / 1000.0;
    let img = image::RgbImage::from_fn(side, side, |px, py| {
        let d = ((px as f32 - cx).powi(2) + (py as f32 - cy).powi(2)).sqrt();
        let ring = ((d * freq).sin() * 127.0 + 128.0) as u8;
        let noise = (next() & 0x1f) as u8;
        image::Rgb([
            ring.wrapping_add(noise),
            (px * 255 / side) as u8,
            (py * 255 / side) as u8 ^ noise,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding an in-memory PNG cannot fail");
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small PNG whose header claims 100,000 × 100,000 pixels (30 GB once
/// decoded): what a decompression bomb looks like to a decoder.
pub fn decompression_bomb_png() -> Vec<u8> {
    let mut png = synthetic_png(1, 8);
    // Signature (8 bytes), then the IHDR chunk: length (4), type (4), data (13), CRC (4).
    let side = 100_000u32.to_be_bytes();
    png[16..20].copy_from_slice(&side);
    png[20..24].copy_from_slice(&side);
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Bytes that are no image at all.
pub fn not_an_image() -> Vec<u8> {
    b"%PDF-1.4 this is not an image\n".to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::ProcessError;

    #[test]
    fn synthetic_images_decode_and_differ() {
        let a = synthetic_png(1, 64);
        let b = synthetic_png(2, 64);
        assert_ne!(a, b);
        let img = crate::decode_limited(&a, 8192, 1 << 28).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    #[test]
    fn bomb_and_garbage_are_refused_as_bad_input() {
        match crate::decode_limited(&decompression_bomb_png(), 8192, 1 << 28) {
            Err(ProcessError::BadInput { reason }) => {
                assert!(reason.contains("limits"), "{reason}")
            }
            other => panic!("bomb decoded: {other:?}"),
        }
        match crate::decode_limited(&not_an_image(), 8192, 1 << 28) {
            Err(ProcessError::BadInput { reason }) => {
                assert!(reason.contains("not an image"), "{reason}")
            }
            other => panic!("garbage decoded: {other:?}"),
        }
    }
}
