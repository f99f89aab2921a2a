//! How the report writes numbers: significant digits that follow the standard error.

/// A value with 4 significant digits and its standard error with at least 2, both with the
/// same decimals.
pub(super) fn pm(v: f64, se: Option<f64>) -> String {
    match se {
        Some(se) => {
            let se_decimals = if se > 0.0 && se.is_finite() {
                (1 - se.log10().floor() as i64).clamp(0, 8) as usize
            } else {
                0
            };
            let decimals = decimals_for(v).max(se_decimals);
            format!("{v:.decimals$} ± {se:.decimals$}")
        }
        None => format!("{v:.*}", decimals_for(v)),
    }
}

pub(super) fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.*}", decimals_for(v)))
}

pub(super) fn decimals_for(v: f64) -> usize {
    if v == 0.0 || !v.is_finite() {
        return 4;
    }
    (3 - v.abs().log10().floor() as i64).clamp(0, 8) as usize
}

pub(super) fn pm_opt(v: Option<f64>, se: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| pm(v, se))
}
