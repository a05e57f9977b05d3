//! PyO3 bindings: the `ssetally._core` extension module. All Python glue of
//! the crate lives here and in the submodules (one per class family, plus
//! the conversions they share); the modules they wrap know nothing of
//! Python.

mod body;
mod content;
mod convert;
mod event;
mod filters;
mod json;
mod records;
mod relay;
mod report;
mod secrets;
mod tally;
mod tap;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    ssetally._core,
    EventTooLargeError,
    PyValueError,
    "An event exceeded the decoder's max_event_size and was discarded."
);

create_exception!(
    ssetally._core,
    DecompressionError,
    PyValueError,
    "A compressed body is corrupt or truncated."
);

create_exception!(
    ssetally._core,
    DecompressionBombError,
    DecompressionError,
    "A compressed body decompressed past a ContentDecoder limit."
);

#[pymodule(gil_used = false)]
mod _core {
    use crate::sse::DEFAULT_MAX_EVENT_SIZE;

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[pymodule_export]
    const DEFAULT_MAX_EVENT_SIZE_BYTES: usize = DEFAULT_MAX_EVENT_SIZE;

    #[pymodule_export]
    const MAX_HELD_BYTES: usize = crate::usage::MAX_HELD_BYTES;

    #[pymodule_export]
    const MAX_HELD_READS: usize = crate::usage::MAX_HELD_READS;

    #[pymodule_export]
    use super::EventTooLargeError;

    #[pymodule_export]
    use super::{DecompressionBombError, DecompressionError};

    #[pymodule_export]
    use super::event::{SSEDecoder, ServerSentEvent};

    #[pymodule_export]
    use super::tap::UsageTap;

    #[pymodule_export]
    use super::content::ContentDecoder;

    #[pymodule_export]
    use super::filters::{LineDecoder, UsageChunkStripper};

    #[pymodule_export]
    use super::relay::BodyRelay;

    #[pymodule_export]
    use super::body::{head_end, UpstreamBody};

    #[pymodule_export]
    use super::json::{compact_json, json_object};

    #[pymodule_export]
    use super::records::{clean_line, record_is_clean};

    #[pymodule_export]
    use super::secrets::mentions;

    #[pymodule_export]
    use super::tally::Tally;
}
