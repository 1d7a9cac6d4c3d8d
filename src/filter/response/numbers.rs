//! JSON numbers, byte at a time: validated exactly as serde_json reads
//! them (out-of-range numbers are refused like the reference does).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum NumPhase {
    Start,
    Minus,
    Zero,
    Int,
    Frac0,
    Frac,
    ExpStart,
    ExpSign,
    Exp,
}

/// A number in progress. The significand/exponent bookkeeping mirrors
/// serde_json's parser (without `float_roundtrip`) step by step, so that
/// exactly the numbers it reports as out of range are refused here too.
#[derive(Clone, Copy, Debug)]
pub(super) struct Num {
    pub(super) phase: NumPhase,
    pub(super) sig: u64,
    pub(super) exp: i32,
    pub(super) long: bool,
    pub(super) float: bool,
    pub(super) sig_full: bool,
    pub(super) exp_pos: bool,
    pub(super) e: i32,
    pub(super) e_over: bool,
    pub(super) emit: bool,
}

impl Num {
    pub(super) fn new(emit: bool) -> Num {
        Num {
            phase: NumPhase::Start,
            sig: 0,
            exp: 0,
            long: false,
            float: false,
            sig_full: false,
            exp_pos: true,
            e: 0,
            e_over: false,
            emit,
        }
    }

    /// serde_json's `overflow!(a * 10 + b, max)`.
    pub(super) fn overflows(a: u64, b: u64, max: u64) -> bool {
        a >= max / 10 && (a > max / 10 || b > max % 10)
    }

    pub(super) fn int_digit(&mut self, d: u64) {
        if self.long {
            self.exp = self.exp.saturating_add(1);
        } else if Num::overflows(self.sig, d, u64::MAX) {
            self.long = true;
            self.float = true;
            self.exp = self.exp.saturating_add(1);
        } else {
            self.sig = self.sig * 10 + d;
        }
    }

    pub(super) fn frac_digit(&mut self, d: u64) {
        if self.sig_full {
            return;
        }
        if Num::overflows(self.sig, d, u64::MAX) {
            self.sig_full = true;
        } else {
            self.sig = self.sig * 10 + d;
            self.exp = self.exp.saturating_sub(1);
        }
    }

    pub(super) fn exp_digit(&mut self, d: u8) {
        if self.e_over {
            return;
        }
        let d = i32::from(d);
        if Num::overflows(self.e as u64, d as u64, i32::MAX as u64) {
            self.e_over = true;
        } else {
            self.e = self.e * 10 + d;
        }
    }

    /// `Ok(false)`: the text so far is not a complete number.
    pub(super) fn complete(&self) -> Result<bool, ()> {
        if !matches!(
            self.phase,
            NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::Exp
        ) {
            return Ok(false);
        }
        if !self.float {
            return Ok(true);
        }
        if self.e_over {
            return if self.sig != 0 && self.exp_pos {
                Err(())
            } else {
                Ok(true)
            };
        }
        let exponent = if self.exp_pos {
            self.exp.saturating_add(self.e)
        } else {
            self.exp.saturating_sub(self.e)
        };
        if out_of_range(self.sig, exponent) {
            Err(())
        } else {
            Ok(true)
        }
    }
}

/// serde_json's `f64_from_parts` range check: `sig * 10^exponent` overflows.
pub(super) fn out_of_range(sig: u64, exponent: i32) -> bool {
    // Below 289, even u64::MAX * 10^exponent stays finite; negative exponents
    // only divide.
    if exponent < 289 {
        return false;
    }
    let f = sig as f64;
    if exponent > 308 {
        return f != 0.0;
    }
    // serde_json multiplies by its literal table entry `1e{exponent}`; parsing
    // the same spelling yields the same correctly rounded value.
    let digits = [
        b'1',
        b'e',
        b'0' + (exponent / 100) as u8,
        b'0' + (exponent / 10 % 10) as u8,
        b'0' + (exponent % 10) as u8,
    ];
    let pow = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    (f * pow).is_infinite()
}

/// Runs the number machine over `input` from `start`: `Ok((end, ended))`,
/// where `ended` means a byte that cannot continue the number was reached at
/// `end`, or `Err(pos)` for a syntax error at `pos`. Shared by the state
/// machine and the fast path so both accept exactly the same numbers.
pub(super) fn number_run(
    num: &mut Num,
    input: &[u8],
    start: usize,
) -> Result<(usize, bool), usize> {
    let mut i = start;
    let ended = loop {
        let Some(&b) = input.get(i) else {
            break false;
        };
        let d = b.wrapping_sub(b'0');
        let digit = d < 10;
        match num.phase {
            NumPhase::Start if b == b'-' => num.phase = NumPhase::Minus,
            NumPhase::Start | NumPhase::Minus => {
                if b == b'0' {
                    num.phase = NumPhase::Zero;
                } else if digit {
                    num.sig = u64::from(d);
                    num.phase = NumPhase::Int;
                } else {
                    return Err(i);
                }
            }
            NumPhase::Zero | NumPhase::Int => {
                if digit {
                    if num.phase == NumPhase::Zero {
                        // serde_json: "There can be only one leading '0'".
                        return Err(i);
                    }
                    num.int_digit(u64::from(d));
                } else if b == b'.' {
                    num.float = true;
                    num.phase = NumPhase::Frac0;
                } else if b | 0x20 == b'e' {
                    num.float = true;
                    num.phase = NumPhase::ExpStart;
                } else {
                    break true;
                }
            }
            NumPhase::Frac0 | NumPhase::Frac => {
                if digit {
                    num.frac_digit(u64::from(d));
                    num.phase = NumPhase::Frac;
                } else if num.phase == NumPhase::Frac0 {
                    return Err(i);
                } else if b | 0x20 == b'e' {
                    num.phase = NumPhase::ExpStart;
                } else {
                    break true;
                }
            }
            NumPhase::ExpStart if b == b'+' => num.phase = NumPhase::ExpSign,
            NumPhase::ExpStart if b == b'-' => {
                num.exp_pos = false;
                num.phase = NumPhase::ExpSign;
            }
            NumPhase::ExpStart | NumPhase::ExpSign => {
                if digit {
                    num.e = i32::from(d);
                    num.phase = NumPhase::Exp;
                } else {
                    return Err(i);
                }
            }
            NumPhase::Exp => {
                if digit {
                    num.exp_digit(d);
                } else {
                    break true;
                }
            }
        }
        i += 1;
    };
    Ok((i, ended))
}
