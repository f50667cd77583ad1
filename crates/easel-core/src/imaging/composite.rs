//! Mask compositing and background flattening.
//!
//! OpenAI's mask convention: a PNG with an alpha channel, the same size as the first input image;
//! fully transparent pixels (alpha 0) mark what may change. After any edit the core puts the
//! source back wherever the mask is opaque, blending by alpha in between, so pixels a client
//! protected are kept exactly, whether or not the backend honoured the mask itself.

use image::{DynamicImage, Rgb, RgbaImage};

/// Blends `source` back over `generated` by the mask's alpha. All three must have the same size.
pub fn apply_mask(
    generated: &DynamicImage,
    source: &DynamicImage,
    mask: &DynamicImage,
) -> DynamicImage {
    let keep_alpha = generated.color().has_alpha();
    let mut out = generated.to_rgba8();
    let source = source.to_rgba8();
    let mask = mask.to_rgba8();
    debug_assert_eq!(out.dimensions(), source.dimensions());
    debug_assert_eq!(out.dimensions(), mask.dimensions());
    for ((o, s), m) in out.pixels_mut().zip(source.pixels()).zip(mask.pixels()) {
        let a = u32::from(m[3]);
        match a {
            0 => {}
            255 => *o = *s,
            _ => {
                for c in 0..4 {
                    o[c] = ((u32::from(s[c]) * a + u32::from(o[c]) * (255 - a) + 127) / 255) as u8;
                }
            }
        }
    }
    if keep_alpha {
        DynamicImage::ImageRgba8(out)
    } else {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(out).to_rgb8())
    }
}

/// Whether any pixel is less than fully opaque.
pub fn has_transparency(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageRgba8(rgba) => rgba.pixels().any(|p| p[3] < 255),
        other if other.color().has_alpha() => other.to_rgba8().pixels().any(|p| p[3] < 255),
        _ => false,
    }
}

/// Composites an image with alpha onto a solid colour, giving an opaque RGB image.
pub fn flatten(image: &DynamicImage, background: Rgb<u8>) -> DynamicImage {
    if !image.color().has_alpha() {
        return image.clone();
    }
    let rgba: RgbaImage = image.to_rgba8();
    let rgb = image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let a = u32::from(p[3]);
        Rgb(std::array::from_fn(|c| {
            ((u32::from(p[c]) * a + u32::from(background[c]) * (255 - a) + 127) / 255) as u8
        }))
    });
    DynamicImage::ImageRgb8(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{RgbImage, Rgba};

    #[test]
    fn opaque_mask_pixels_keep_the_source_exactly() {
        let generated = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 1, Rgb([0, 0, 0])));
        let source = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 1, Rgb([200, 100, 50])));
        let mask = DynamicImage::ImageRgba8(RgbaImage::from_fn(4, 1, |x, _| {
            Rgba([0, 0, 0, [0, 255, 128, 255][x as usize]])
        }));
        let out = apply_mask(&generated, &source, &mask).to_rgb8();
        assert_eq!(out.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(out.get_pixel(1, 0), &Rgb([200, 100, 50]));
        assert_eq!(out.get_pixel(2, 0), &Rgb([100, 50, 25]));
        assert_eq!(out.get_pixel(3, 0), &Rgb([200, 100, 50]));
    }

    #[test]
    fn flatten_blends_onto_the_background() {
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(1, 1, Rgba([0, 0, 0, 0])));
        assert!(has_transparency(&rgba));
        assert_eq!(
            flatten(&rgba, Rgb([255, 255, 255]))
                .to_rgb8()
                .get_pixel(0, 0),
            &Rgb([255, 255, 255])
        );
    }
}
