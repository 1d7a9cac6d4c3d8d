//! How a log line is written: the JSON line (`log.format: json`) and the
//! timestamp of every line.
//!
//! Both give the same output as `tracing_subscriber`'s own JSON formatter and
//! timer, at a fraction of the cost. Its formatter hands serde_json an
//! `io::Write` adaptor that checks each small piece for UTF-8 on its way into
//! a `fmt::Write`, and its timer works out and formats the calendar date for
//! every line: together about 2 µs per line, which was a third of what the
//! gateway adds to a logged `/entity` request. Here serde_json writes the
//! whole line into a reused byte buffer, checked once, and the date and time
//! of day are formatted once a second per thread.

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// UTC, to the microsecond (`2026-11-23T07:37:27.850334Z`), with the date and
/// time of day formatted once per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedUtc;

/// `YYYY-MM-DDTHH:MM:SS` of the second it was formatted for.
struct Second {
    secs: u64,
    text: String,
}

thread_local! {
    static SECOND: RefCell<Option<Second>> = const { RefCell::new(None) };
    /// The line being built, and a scratch string for `Debug` fields.
    static LINE: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

impl FormatTime for CachedUtc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        now_rfc3339(|piece| w.write_str(piece))
    }
}

/// Hands the current time to `put` as two pieces: the cached date and time
/// of day, then the microseconds and `Z`.
fn now_rfc3339<E>(put: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_micros(), put)
}

fn rfc3339<E>(secs: u64, micros: u32, mut put: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    SECOND.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => {
            let second = match cached.as_mut() {
                Some(s) if s.secs == secs => s,
                _ => cached.insert(Second {
                    secs,
                    text: format_second(secs),
                }),
            };
            put(&second.text)
        }
        Err(_) => put(&format_second(secs)),
    })?;
    let mut frac = *b".000000Z";
    let mut rest = micros.min(999_999);
    for digit in frac[1..7].iter_mut().rev() {
        // `rest % 10` is below 10, so the cast cannot truncate.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // ASCII digits and punctuation only, so the fallback is never taken.
    put(std::str::from_utf8(&frac).unwrap_or(".000000Z"))
}

fn format_second(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// One JSON object per line, shaped as `tracing_subscriber`'s JSON format
/// with `flatten_event(true)`: `timestamp`, `level`, every field of the event
/// (`message` included, in the order recorded) at the top level, then
/// `target`. Flat, so a log pipeline can index the access log's fields
/// without unnesting them. Spans are left out: the gateway enters none.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => {
                let (line, scratch) = &mut *bufs;
                write_line(&mut writer, event, line, scratch)
            }
            // A field whose formatting logs would land here: it gets buffers
            // of its own.
            Err(_) => write_line(&mut writer, event, &mut Vec::new(), &mut String::new()),
        })
    }
}

fn write_line(
    writer: &mut Writer<'_>,
    event: &Event<'_>,
    line: &mut Vec<u8>,
    scratch: &mut String,
) -> fmt::Result {
    // Events bridged from the `log` crate (Pingora logs through it) carry
    // their real target and level in `log.*` fields, as reported here too.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    line.clear();
    line.extend_from_slice(b"{\"timestamp\":\"");
    let _ = now_rfc3339(|piece| {
        line.extend_from_slice(piece.as_bytes());
        Ok::<(), Infallible>(())
    });
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(meta.level().as_str().as_bytes());
    line.push(b'"');
    let mut fields = Fields {
        line: &mut *line,
        scratch,
        failed: false,
    };
    event.record(&mut fields);
    if fields.failed {
        return Err(fmt::Error);
    }
    line.extend_from_slice(b",\"target\":");
    json_str(line, meta.target())?;
    line.extend_from_slice(b"}\n");
    // Built from `str`s and serde_json's output only; checked once.
    writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)
}

fn json_str(line: &mut Vec<u8>, s: &str) -> fmt::Result {
    serde_json::to_writer(line, s).map_err(|_| fmt::Error)
}

/// Writes each field as `,"name":value` after `level` or the field before.
struct Fields<'a> {
    line: &'a mut Vec<u8>,
    scratch: &'a mut String,
    failed: bool,
}

impl Fields<'_> {
    fn name(&mut self, field: &Field) {
        self.line.push(b',');
        self.failed |= json_str(self.line, field.name()).is_err();
        self.line.push(b':');
    }

    fn value<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        self.name(field);
        self.failed |= serde_json::to_writer(&mut *self.line, value).is_err();
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, &value);
    }

    /// Also 128-bit integers (the stock formatter writes them as strings)
    /// and `%` fields.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.scratch.clear();
        if write!(self.scratch, "{value:?}").is_err() {
            self.failed = true;
            return;
        }
        let text = std::mem::take(self.scratch);
        self.value(field, text.as_str());
        *self.scratch = text;
    }
}

/// The longest user agent written to the access log, in bytes of the
/// header value; a longer one is cut and ends in `...`.
pub(crate) const USER_AGENT_MAX: usize = 256;

/// Caller-supplied text for a log line: printable ASCII as is, any other
/// byte as `\xNN` (so no control character or invalid UTF-8 reaches a log
/// reader), at most `max` bytes of it, then `...` if it was longer.
pub(crate) fn bounded_text(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 3);
    for &b in bytes.iter().take(max) {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

/// A duration in milliseconds, rounded to the microsecond: written as a
/// number with at most three decimals (`0.246`), never a binary fraction's
/// tail (`0.24591400000000002`), in both log formats.
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    // Whole microseconds are exact in an f64, and the division is correctly
    // rounded, so the shortest decimal form has at most three decimals.
    let micros = (d.as_nanos().saturating_add(500) / 1000).min(1 << 52);
    micros as f64 / 1000.0
}

/// A value or `-`, for fields that are not always known.
pub(crate) struct OrDash<T>(pub(crate) Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        let _ = rfc3339(secs, micros, |piece| {
            out.push_str(piece);
            Ok::<(), Infallible>(())
        });
        out
    }

    #[test]
    fn timestamps_have_the_rfc3339_form_of_the_default_timer() {
        assert_eq!(
            render(1_795_419_447, 850_334),
            "2026-11-23T07:37:27.850334Z"
        );
        assert_eq!(render(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(render(951_782_399, 7), "2000-02-28T23:59:59.000007Z");
    }

    #[test]
    fn durations_have_at_most_three_decimals() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_nanos(245_914)).to_string(), "0.246");
        assert_eq!(millis(Duration::from_nanos(245_499)).to_string(), "0.245");
        assert_eq!(millis(Duration::ZERO).to_string(), "0");
        assert_eq!(millis(Duration::from_millis(1500)).to_string(), "1500");
        assert_eq!(
            serde_json::to_string(&millis(Duration::from_nanos(1_234_567_891))).unwrap(),
            "1234.568"
        );
        for n in (0..200_000u64).step_by(7) {
            let text = format!("{:?}", millis(Duration::from_nanos(n * 1_013)));
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{text}");
        }
    }

    #[test]
    fn caller_text_is_bounded_and_escaped() {
        assert_eq!(bounded_text(b"curl/8.5.0", 256), "curl/8.5.0");
        assert_eq!(
            bounded_text(b"a\"b\\c\n\x1b[31m\xff\xc3\xa9", 256),
            "a\"b\\x5cc\\x0a\\x1b[31m\\xff\\xc3\\xa9"
        );
        assert_eq!(bounded_text(&[b'x'; 10], 4), "xxxx...");
        assert_eq!(bounded_text(&[b'x'; 4], 4), "xxxx");
    }

    #[test]
    fn a_new_second_replaces_the_cached_one() {
        assert_eq!(render(86_399, 999_999), "1970-01-01T23:59:59.999999Z");
        assert_eq!(render(86_400, 1), "1970-01-02T00:00:00.000001Z");
        assert_eq!(render(86_399, 5), "1970-01-01T23:59:59.000005Z");
    }

    #[test]
    fn timestamps_agree_with_chrono_for_the_current_time() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let expected =
            chrono::DateTime::from_timestamp(now.as_secs() as i64, now.subsec_micros() * 1000)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
        assert_eq!(render(now.as_secs(), now.subsec_micros()), expected);
    }
}

#[cfg(test)]
mod same_as_tracing_subscriber {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn events() {
        let rid = String::from("a1b2\"c3\\d4\u{1}é");
        tracing::info!(
            target: "access",
            request_id = %rid,
            client_id = "partner-readonly",
            route = "entity",
            status = 200u16,
            total_ms = 1.234_f64,
            upstream_ms = 0.5_f64,
            nan = f64::NAN,
            neg = -7_i64,
            big = u128::MAX,
            flag = true,
            error = "",
        );
        tracing::warn!(reason = "too_large", detail = ?("x", 1), "streamed response cut: {}", "why");
        tracing::error!("plain message with \"quotes\" and a\nnewline");
        let record = log::Record::builder()
            .args(format_args!("from the log crate"))
            .level(log::Level::Warn)
            .target("pingora_core::server")
            .module_path_static(Some("pingora_core::server"))
            .file_static(Some("server.rs"))
            .line(Some(42))
            .build();
        tracing_log::format_trace(&record).unwrap();
    }

    fn lines(with_ours: bool) -> Vec<Value> {
        let capture = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_max_level(tracing::Level::TRACE);
        if with_ours {
            let sub = builder
                .with_timer(CachedUtc)
                .event_format(JsonLines)
                .finish();
            tracing::subscriber::with_default(sub, events);
        } else {
            let sub = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(sub, events);
        }
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn every_line_matches_the_stock_json_formatter_but_the_time() {
        let ours = lines(true);
        let stock = lines(false);
        assert_eq!(ours.len(), 4);
        assert_eq!(ours.len(), stock.len());
        for (mut a, mut b) in ours.into_iter().zip(stock) {
            let ta = a["timestamp"].take();
            let tb = b["timestamp"].take();
            assert_eq!(a, b);
            let (ta, tb) = (ta.as_str().unwrap(), tb.as_str().unwrap());
            assert_eq!(ta.len(), tb.len(), "{ta} vs {tb}");
            assert_eq!(ta[..16], tb[..16], "{ta} vs {tb}");
        }
    }
}
