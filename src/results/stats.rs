//! The few statistics the charts and reports use: means with standard errors over seeds,
//! centred rolling means and standard deviations of a logged series, and the loss noise; and
//! how an estimate with its standard error is written in logs and terminal tables.

/// `value ± standard error` with four decimals, or `value ± n/a` where there is no standard
/// error (one batch or one sequence).
pub fn plus_minus(value: f64, se: f64) -> String {
    match se.is_finite() {
        true => format!("{value:.4} ± {se:.4}"),
        false => format!("{value:.4} ± n/a"),
    }
}

/// Mean and standard error of the mean (sample standard deviation / √n). The standard error
/// needs two values; `None` for an empty slice.
pub fn mean_se(values: &[f64]) -> Option<(f64, Option<f64>)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let se = (n >= 2).then(|| {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    Some((mean, se))
}

/// Centred rolling mean over `window` points (odd; h = window/2 on each side). Near the ends
/// the window shrinks symmetrically, so the curve stays centred (it neither lags behind the
/// data nor bends towards the middle), but not below h/2 points on each side: nearer the ends
/// there is no mean (`None`), because a window of one or two raw points would show their
/// noise as a spike of the smoothed curve. A series too short for that keeps its middle.
pub fn rolling_mean(values: &[f64], window: usize) -> Vec<Option<f64>> {
    let n = values.len();
    let h_full = window / 2;
    let h_min = (h_full / 2).min(n.saturating_sub(1) / 2);
    let mut prefix = vec![0.0];
    for v in values {
        prefix.push(prefix.last().unwrap_or(&0.0) + v);
    }
    (0..n)
        .map(|i| {
            let h = h_full.min(i).min(n - 1 - i);
            (h >= h_min).then(|| (prefix[i + h + 1] - prefix[i - h]) / (2 * h + 1) as f64)
        })
        .collect()
}

/// Centred rolling standard deviation: for point i, the sample standard deviation (divisor
/// W − 1) of the W = 2h + 1 points i − h ..= i + h around their own mean. `None` where the
/// window does not fit inside the series.
pub fn rolling_std(values: &[f64], window: usize) -> Vec<Option<f64>> {
    let h = window / 2;
    let w = 2 * h + 1;
    (0..values.len())
        .map(|i| {
            if h == 0 || i < h || i + h >= values.len() {
                return None;
            }
            let win = &values[i - h..=i + h];
            let mean = win.iter().sum::<f64>() / w as f64;
            let var = win.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (w - 1) as f64;
            Some(var.sqrt())
        })
        .collect()
}

/// The loss noise of one run: the mean of [`rolling_std`] over the points in the second half
/// of the series (0-based index i ≥ n/2, rounded down), among those where the window fits.
/// `None` when no such point exists (fewer than about 2W logged points).
pub fn loss_noise(values: &[f64], window: usize) -> Option<f64> {
    let second_half: Vec<f64> = rolling_std(values, window)
        .into_iter()
        .skip(values.len() / 2)
        .flatten()
        .collect();
    mean_se(&second_half).map(|(mean, _)| mean)
}

/// a / b with the standard error of the ratio from those of a and b (first-order
/// propagation, treating a and b as independent): (a/b)·√((se_a/a)² + (se_b/b)²).
pub fn ratio_se(a: f64, se_a: Option<f64>, b: f64, se_b: Option<f64>) -> (f64, Option<f64>) {
    let ratio = a / b;
    let se = se_a
        .zip(se_b)
        .map(|(sa, sb)| ratio.abs() * ((sa / a).powi(2) + (sb / b).powi(2)).sqrt());
    (ratio, se)
}

/// a − b with the standard error √(se_a² + se_b²) (independent groups).
pub fn difference_se(a: f64, se_a: Option<f64>, b: f64, se_b: Option<f64>) -> (f64, Option<f64>) {
    (a - b, se_a.zip(se_b).map(|(sa, sb)| sa.hypot(sb)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error_by_hand() {
        // 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, variance 14/3.
        let (mean, se) = mean_se(&[1.0, 2.0, 3.0, 6.0]).unwrap();
        assert_eq!(mean, 3.0);
        assert!((se.unwrap() - (14.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_se(&[5.0]), Some((5.0, None)));
        assert_eq!(mean_se(&[]), None);
    }

    #[test]
    fn rolling_mean_is_centred_and_shrinks_at_the_ends() {
        // Window 5 (h = 2) over 1, 2, 4, 8, 16, 32: the middle points average 5, the next
        // ones 3 (h = 1, the least allowed), the ends none.
        let m = rolling_mean(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0], 5);
        assert_eq!(
            m,
            [
                None,
                Some(7.0 / 3.0),
                Some(31.0 / 5.0),
                Some(62.0 / 5.0),
                Some(56.0 / 3.0),
                None
            ]
        );
        assert_eq!(rolling_mean(&[1.0, 2.0], 1), [Some(1.0), Some(2.0)]);
        // Too short for h/2 = 5 on each side: the middle point alone, over all three.
        assert_eq!(rolling_mean(&[1.0, 2.0, 6.0], 21), [None, Some(3.0), None]);
        assert_eq!(rolling_mean(&[], 3), Vec::<Option<f64>>::new());
    }

    #[test]
    fn rolling_std_of_an_alternating_series() {
        // Window 3 over c ± d alternating: deviations from the window mean are 2d/3, −4d/3,
        // 2d/3 (or their negatives); sum of squares 24d²/9, over W − 1 = 2: 4d²/3.
        let d = 0.3;
        let values: Vec<f64> = (0..8)
            .map(|i| 2.0 + if i % 2 == 0 { d } else { -d })
            .collect();
        let s = rolling_std(&values, 3);
        assert_eq!(s[0], None);
        assert_eq!(s[7], None);
        for v in &s[1..7] {
            assert!((v.unwrap() - 2.0 * d / 3f64.sqrt()).abs() < 1e-12);
        }
        assert!((loss_noise(&values, 3).unwrap() - 2.0 * d / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(loss_noise(&values[..2], 3), None);
    }

    #[test]
    fn noise_uses_only_the_second_half() {
        // Noisy first half, flat second half: the noise is that of the flat part, 0.
        let mut values: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 5.0 } else { 1.0 })
            .collect();
        values.extend([1.0; 10]);
        assert_eq!(loss_noise(&values, 3), Some(0.0));
    }

    #[test]
    fn ratio_and_difference_errors() {
        let (r, se) = ratio_se(2.0, Some(0.2), 4.0, Some(0.4));
        assert_eq!(r, 0.5);
        assert!((se.unwrap() - 0.5 * (0.01f64 + 0.01).sqrt()).abs() < 1e-15);
        assert_eq!(
            difference_se(3.0, Some(3.0), 1.0, Some(4.0)),
            (2.0, Some(5.0))
        );
        assert_eq!(ratio_se(1.0, None, 2.0, Some(0.1)).1, None);
    }
}
