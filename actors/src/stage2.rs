//! Stage 2: the stage-1 result → grey-level statistics as JSON.

use ferry::{Context, Job, JobId, Output, ProcessError, Processor};
use serde::{Deserialize, Serialize};

/// What stage 2 computes, stored as `stage2/<job-id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    /// The job's id.
    pub job_id: JobId,
    /// Where the analysed image was.
    pub source: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Mean grey level (0–255).
    pub mean: f64,
    /// Standard deviation of the grey level.
    pub std_dev: f64,
    /// Shannon entropy of the grey-level histogram, in bits.
    pub entropy: f64,
    /// Pixels per grey level.
    pub histogram: Vec<u64>,
}

impl ImageStats {
    /// Computes the statistics of an image.
    pub fn of(job_id: JobId, source: String, img: &image::DynamicImage) -> Self {
        let grey = img.to_luma8();
        let mut histogram = vec![0u64; 256];
        for p in grey.pixels() {
            histogram[p.0[0] as usize] += 1;
        }
        let n = (grey.width() as u64 * grey.height() as u64).max(1) as f64;
        let mean = histogram
            .iter()
            .enumerate()
            .map(|(v, c)| v as f64 * *c as f64)
            .sum::<f64>()
            / n;
        let var = histogram
            .iter()
            .enumerate()
            .map(|(v, c)| (v as f64 - mean).powi(2) * *c as f64)
            .sum::<f64>()
            / n;
        let entropy = histogram
            .iter()
            .filter(|c| **c > 0)
            .map(|c| {
                let p = *c as f64 / n;
                -p * p.log2()
            })
            .sum();
        Self {
            job_id,
            source,
            width: grey.width(),
            height: grey.height(),
            mean,
            std_dev: var.sqrt(),
            entropy,
            histogram,
        }
    }
}

/// The stage-2 processor.
#[derive(Debug, Clone, Default)]
pub struct Stage2;

impl Processor for Stage2 {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        let notice = job.notice()?;
        let bytes = ctx.fetch(&notice.bucket, &notice.key)?;
        let img = crate::decode_limited(&bytes, 8192, 256 * 1024 * 1024)?;
        let stats = ImageStats::of(
            notice.job_id.clone(),
            format!("s3://{}/{}", notice.bucket, notice.key),
            &img,
        );
        Output::json(&stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_a_two_level_image() {
        let mut img = image::GrayImage::new(2, 2);
        img.put_pixel(0, 0, image::Luma([0]));
        img.put_pixel(1, 0, image::Luma([0]));
        img.put_pixel(0, 1, image::Luma([200]));
        img.put_pixel(1, 1, image::Luma([200]));
        let s = ImageStats::of(
            JobId::new("j"),
            "x".into(),
            &image::DynamicImage::ImageLuma8(img),
        );
        assert_eq!(s.mean, 100.0);
        assert_eq!(s.std_dev, 100.0);
        assert!((s.entropy - 1.0).abs() < 1e-12);
        assert_eq!(s.histogram[0], 2);
        assert_eq!(s.histogram[200], 2);
    }
}
