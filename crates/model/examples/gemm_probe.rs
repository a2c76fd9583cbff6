use burn::prelude::*;
use scorefleet_model::BackendKind;
use std::time::Instant;
fn main() {
    let shapes = [
        (100352usize, 576usize, 64usize),
        (2048, 800, 64),
        (18432, 25, 32),
        (32 * 49, 4608, 512),
        (32 * 784, 1152, 128),
    ];
    for be in BackendKind::all() {
        let dev = be.device();
        for &(m, k, n) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b = Tensor::<2>::from_data(
                TensorData::new((0..k * n).map(|i| (i % 5) as f32).collect::<Vec<f32>>(), [k, n]),
                &dev,
            );
            let mut best = f64::MAX;
            for _ in 0..5 {
                let a2 = a.clone();
                let t = Instant::now();
                let x = Tensor::<2>::from_data(TensorData::new(a2, [m, k]), &dev);
                let y: Vec<f32> = x.matmul(b.clone()).into_data().into_vec().unwrap();
                std::hint::black_box(&y);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{be} m={m} k={k} n={n}: {:.1} ms {:.1} GFLOP/s",
                best * 1e3,
                2.0 * (m * k * n) as f64 / best / 1e9
            );
        }
    }
}
