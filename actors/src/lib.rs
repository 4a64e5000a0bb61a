//! Ready-made ferry processors, written only against ferry's public API.
//!
//! - [`Stage1`]: reads a source image named by an S3 event notification or a
//!   `{"bucket","key"}` message, resizes it, runs a blur that costs real CPU,
//!   and returns a PNG. Decoding has limits, so a decompression bomb is
//!   refused as bad input. [`stage1_job_id`] derives an S3 event's job id
//!   from the object and its version (duplicate deliveries are one job) and
//!   [`stage1_split`] splits an event with several records into one message
//!   per record; register both on the stage-1 pipeline ([`Stage1::pipeline`]).
//! - [`Stage2`]: reads the stage-1 result a [`ferry::ResultNotice`] points
//!   to and computes a grey-level histogram, mean, standard deviation and
//!   entropy, returned as a JSON document that holds the job id.
//! - [`samples`]: synthetic images and bad inputs for demos, tests and
//!   benches.

mod input;
pub mod samples;
mod stage1;
mod stage2;

pub use input::{
    parse_source, s3_event_job_id, split_s3_event, stage1_job_id, stage1_split, SourceRef,
};
pub use stage1::{Stage1, Stage1Config};
pub use stage2::{ImageStats, Stage2};

use ferry::ProcessError;

/// Decodes an image with size limits; anything that is not a decodable image
/// within the limits is bad input.
pub fn decode_limited(
    bytes: &[u8],
    max_side: u32,
    max_alloc: u64,
) -> Result<image::DynamicImage, ProcessError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ProcessError::bad_input(format!("not an image: {e}")))?;
    if reader.format().is_none() {
        return Err(ProcessError::bad_input(
            "not an image: unrecognised format".to_string(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(max_alloc);
    let mut reader = reader;
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => ProcessError::bad_input(format!(
            "image refused by decode limits (possible decompression bomb): {l}"
        )),
        other => ProcessError::bad_input(format!("not a decodable image: {other}")),
    })
}
