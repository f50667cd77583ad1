//! Mask compositing and background flattening.
//!
//! OpenAI's mask convention: a PNG with an alpha channel, the same size as the first input image;
//! fully transparent pixels (alpha 0) mark what may change. After any edit the core puts the
//! source back wherever the mask is opaque, blending by alpha in between, so pixels a client
//! protected are kept exactly, whether or not the backend honoured the mask itself.

use image::{DynamicImage, Rgb, RgbaImage};

/// Blends `source` back over `generated` by the mask's alpha. All three must have the same size.
/// The result has `generated`'s layout (RGB, or RGBA when it has alpha).
pub fn apply_mask(generated: &DynamicImage, source: &DynamicImage, mask: &DynamicImage) -> DynamicImage {
    let alpha = alpha_channel(mask);
    if generated.color().has_alpha() {
        let mut out = generated.to_rgba8();
        let source = as_rgba(source);
        blend(&mut out, source.as_raw(), &alpha, 4);
        DynamicImage::ImageRgba8(out)
    } else {
        let mut out = generated.to_rgb8();
        let source = as_rgb(source);
        blend(&mut out, source.as_raw(), &alpha, 3);
        DynamicImage::ImageRgb8(out)
    }
}

/// `out = source * a + out * (1 - a)` per pixel of `channels` bytes.
fn blend(out: &mut [u8], source: &[u8], alpha: &[u8], channels: usize) {
    for ((o, s), &a) in out.chunks_exact_mut(channels).zip(source.chunks_exact(channels)).zip(alpha) {
        match a {
            0 => {}
            255 => o.copy_from_slice(s),
            _ => {
                let (a, b) = (u32::from(a), 255 - u32::from(a));
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = ((u32::from(s) * a + u32::from(*o) * b + 127) / 255) as u8;
                }
            }
        }
    }
}

fn alpha_channel(mask: &DynamicImage) -> Vec<u8> {
    match mask {
        DynamicImage::ImageRgba8(rgba) => rgba.as_raw().iter().skip(3).step_by(4).copied().collect(),
        DynamicImage::ImageLumaA8(la) => la.as_raw().iter().skip(1).step_by(2).copied().collect(),
        other => other.to_rgba8().as_raw().iter().skip(3).step_by(4).copied().collect(),
    }
}

fn as_rgb(image: &DynamicImage) -> std::borrow::Cow<'_, image::RgbImage> {
    match image {
        DynamicImage::ImageRgb8(rgb) => std::borrow::Cow::Borrowed(rgb),
        other => std::borrow::Cow::Owned(other.to_rgb8()),
    }
}

fn as_rgba(image: &DynamicImage) -> std::borrow::Cow<'_, RgbaImage> {
    match image {
        DynamicImage::ImageRgba8(rgba) => std::borrow::Cow::Borrowed(rgba),
        other => std::borrow::Cow::Owned(other.to_rgba8()),
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
        Rgb(std::array::from_fn(|c| ((u32::from(p[c]) * a + u32::from(background[c]) * (255 - a) + 127) / 255) as u8))
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
        let mask =
            DynamicImage::ImageRgba8(RgbaImage::from_fn(4, 1, |x, _| Rgba([0, 0, 0, [0, 255, 128, 255][x as usize]])));
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
        assert_eq!(flatten(&rgba, Rgb([255, 255, 255])).to_rgb8().get_pixel(0, 0), &Rgb([255, 255, 255]));
    }
}
