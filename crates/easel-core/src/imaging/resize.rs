//! Resampling with `fast_image_resize` (SIMD Lanczos3, alpha-aware).

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::types::ImageSize;

/// Resizes to exactly `size`, stretching if the aspect ratio differs.
pub fn resize_exact(image: &DynamicImage, size: ImageSize) -> anyhow::Result<DynamicImage> {
    resize_with(image, size, &ResizeOptions::new())
}

/// Resizes to cover `size` and crops the centre, so the aspect ratio is kept and nothing is
/// stretched: what the core does when a backend made a different shape than was asked for.
pub fn resize_cover(image: &DynamicImage, size: ImageSize) -> anyhow::Result<DynamicImage> {
    resize_with(image, size, &ResizeOptions::new().fit_into_destination(Some((0.5, 0.5))))
}

fn resize_with(image: &DynamicImage, size: ImageSize, options: &ResizeOptions) -> anyhow::Result<DynamicImage> {
    if image.width() == size.width && image.height() == size.height {
        return Ok(image.clone());
    }
    let source = match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) | DynamicImage::ImageLuma8(_) => None,
        other if other.color().has_alpha() => Some(DynamicImage::ImageRgba8(other.to_rgba8())),
        other => Some(DynamicImage::ImageRgb8(other.to_rgb8())),
    };
    let source = source.as_ref().unwrap_or(image);
    let mut target = DynamicImage::new(size.width, size.height, source.color());
    let options = options.clone().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new().resize(source, &mut target, &options)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn cover_keeps_the_centre_without_stretching() {
        // Left third red, middle third green, right third blue.
        let wide = RgbImage::from_fn(90, 30, |x, _| match x / 30 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let square = resize_cover(&DynamicImage::ImageRgb8(wide.clone()), ImageSize::new(10, 10)).unwrap().to_rgb8();
        assert_eq!(square.dimensions(), (10, 10));
        let centre = square.get_pixel(5, 5);
        assert!(centre[1] > 200 && centre[0] < 50 && centre[2] < 50, "{centre:?}");
        let stretched = resize_exact(&DynamicImage::ImageRgb8(wide), ImageSize::new(9, 3)).unwrap();
        assert_eq!((stretched.width(), stretched.height()), (9, 3));
    }
}
