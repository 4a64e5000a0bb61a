//! Stage 1: source image → resized, blurred PNG.

use ferry::{Context, Job, Output, ProcessError, Processor};
use image::imageops::FilterType;

use crate::input::parse_source;

/// Stage-1 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Config {
    /// The result fits in a square of this side.
    pub max_side: u32,
    /// Gaussian blur sigma (the costly filter).
    pub blur_sigma: f32,
    /// Largest width or height accepted when decoding.
    pub decode_max_side: u32,
    /// Largest allocation accepted when decoding, in bytes.
    pub decode_max_alloc: u64,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            max_side: 256,
            blur_sigma: 2.0,
            decode_max_side: 8192,
            decode_max_alloc: 256 * 1024 * 1024,
        }
    }
}

/// The stage-1 processor.
///
/// Register [`crate::stage1_job_id`] and [`crate::stage1_split`] on its
/// pipeline (see [`Stage1::pipeline`]): duplicate deliveries of one S3
/// event are then one job, and an event with several records is split into
/// one job per record.
#[derive(Debug, Clone, Default)]
pub struct Stage1 {
    config: Stage1Config,
}

impl Stage1 {
    /// With these settings.
    pub fn new(config: Stage1Config) -> Self {
        Self { config }
    }

    /// Registers stage 1's job-id and split functions on a pipeline (its
    /// processor, queues and sinks are the caller's to set).
    pub fn pipeline(pipeline: ferry::Pipeline) -> ferry::Pipeline {
        pipeline
            .job_id(crate::stage1_job_id)
            .split(crate::stage1_split)
    }

    /// The image work alone, on encoded bytes: decode, resize, blur, encode
    /// PNG. Benches call this to compare ferry with a raw loop.
    pub fn transform(&self, bytes: &[u8]) -> Result<Vec<u8>, ProcessError> {
        let c = &self.config;
        let img = crate::decode_limited(bytes, c.decode_max_side, c.decode_max_alloc)?;
        let (w, h) = (img.width().max(1), img.height().max(1));
        let scale = (c.max_side as f32 / w.max(h) as f32).min(1.0);
        let (nw, nh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        let resized = image::imageops::resize(&img.to_rgb8(), nw, nh, FilterType::Lanczos3);
        let blurred = image::imageops::blur(&resized, c.blur_sigma);
        let mut out = std::io::Cursor::new(Vec::new());
        blurred
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| ProcessError::retry(format!("encoding PNG: {e}")))?;
        Ok(out.into_inner())
    }
}

impl Processor for Stage1 {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        // S3's test event is bad input here: ferry deletes it on receipt
        // (unless told not to), and an empty result would only mislead stage 2.
        let source = parse_source(&job.body)?;
        let bytes = ctx.fetch(&source.bucket, &source.key)?;
        let png = self.transform(&bytes).map_err(|e| match e {
            ProcessError::BadInput { reason } => {
                ProcessError::bad_input(format!("s3://{}/{}: {reason}", source.bucket, source.key))
            }
            other => other,
        })?;
        Ok(Output::bytes(png, "image/png"))
    }
}
