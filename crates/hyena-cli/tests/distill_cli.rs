//! `hyena distill`, `hyena generate --mode recurrent` and `hyena bench generate` end to end on
//! a small trained run, and their errors (clear message, non-zero exit, nothing on disk
//! changed).

mod common;
use common::{fails_with, hyena, ok, snapshot};

#[test]
fn distill_then_generate_recurrently() {
    let dir = common::tmpdir("distill");
    let fa = dir.join("toy.fa");
    common::toy_fasta(&fa, "toy", 3000, 11, None);
    let run = dir.join("run");
    let (fa, run_s) = (fa.to_str().unwrap(), run.to_str().unwrap());
    ok(&hyena(&[
        "train",
        "--fasta",
        fa,
        "--out",
        run_s,
        "--steps",
        "2",
        "--seq-len",
        "64",
        "--batch",
        "2",
        "--d-model",
        "16",
        "--n-layer",
        "2",
        "--eval-every",
        "1",
    ]));

    let dist = dir.join("dist");
    let dist_s = dist.to_str().unwrap();
    let out = ok(&hyena(&[
        "distill",
        "--model",
        run_s,
        "--order",
        "4",
        "--refine-steps",
        "20",
        "--out",
        dist_s,
    ]));
    assert!(
        out.contains("| layer |") && out.contains("rel. err"),
        "{out}"
    );
    for f in [
        "model.safetensors",
        "config.json",
        "distill_report.json",
        "distill_error_vs_order.png",
        "distill_filters.png",
    ] {
        assert!(dist.join(f).exists(), "{f}");
    }
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dist.join("distill_report.json")).unwrap()).unwrap();
    assert_eq!(rep["filters"].as_array().unwrap().len(), 2 * 16);

    // Eval works on the distilled directory as on any run.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&hyena(&["eval", "--model", dist_s, "--json"]))).unwrap();
    assert!(v["bits_per_token"].as_f64().unwrap() > 1.0);

    // ESS of the original and of the distilled model: per layer, filters and operator.
    for m in [run_s, dist_s] {
        let png = dir.join("ess.png");
        let v: serde_json::Value = serde_json::from_str(&ok(&hyena(&[
            "analyze",
            "ess",
            "--model",
            m,
            "--json",
            "--png",
            png.to_str().unwrap(),
        ])))
        .unwrap();
        for kind in ["filters", "operator"] {
            let layers = v[kind].as_array().unwrap();
            assert_eq!(layers.len(), 2, "{kind}: {v}");
            assert_eq!(layers[0]["channels"].as_array().unwrap().len(), 16);
            assert!(layers
                .iter()
                .all(|l| l["tolerance_total"].as_f64().unwrap() >= 1.0));
        }
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        std::fs::remove_file(&png).unwrap();
    }
    // The distilled filters have at most the fitted order 4 of state each.
    let v: serde_json::Value = serde_json::from_str(&ok(&hyena(&[
        "analyze",
        "ess",
        "--model",
        dist_s,
        "--json",
        "--tol",
        "1e-6",
        "--png",
        dir.join("e.png").to_str().unwrap(),
    ])))
    .unwrap();
    std::fs::remove_file(dir.join("e.png")).unwrap();
    for ch in v["filters"][0]["channels"].as_array().unwrap() {
        assert!(ch[0].as_f64().unwrap() <= 4.0, "{ch}");
    }

    // Recurrent and conv generation agree on a distilled model.
    let gen = |mode: &str| {
        ok(&hyena(&[
            "generate", "--model", dist_s, "--prompt", "ACGTTGCA", "--tokens", "40", "--seed", "5",
            "--mode", mode,
        ]))
    };
    let rec = gen("recurrent");
    assert_eq!(rec, gen("conv"));
    assert_eq!(rec.trim().len(), 48);

    // Errors leave everything as it was.
    let before = snapshot(&dir);
    fails_with(
        &hyena(&[
            "generate",
            "--model",
            run_s,
            "--prompt",
            "ACGT",
            "--mode",
            "recurrent",
        ]),
        &["not a distilled model", "hyena distill"],
    );
    fails_with(
        &hyena(&["distill", "--model", run_s, "--order", "2", "--out", dist_s]),
        &["not empty", "nothing was written"],
    );
    let other = dir.join("other");
    fails_with(
        &hyena(&[
            "distill",
            "--model",
            run_s,
            "--order",
            "1000",
            "--out",
            other.to_str().unwrap(),
        ]),
        &["order", "1000", "layer 0"],
    );
    fails_with(
        &hyena(&[
            "distill", "--model", run_s, "--order", "2", "--tol", "1e-3", "--out", "x",
        ]),
        &["--tol"],
    );
    assert_eq!(snapshot(&dir), before);
    // A model without long convolutions (no Hyena blocks) and a non-finite filter.
    let nolong = dir.join("nolong");
    std::fs::create_dir_all(&nolong).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    cfg["model"]["n_layer"] = 0.into();
    std::fs::write(nolong.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        run.join("model.safetensors"),
        nolong.join("model.safetensors"),
    )
    .unwrap();
    let nan = dir.join("nan");
    std::fs::create_dir_all(&nan).unwrap();
    std::fs::copy(run.join("config.json"), nan.join("config.json")).unwrap();
    let loaded = hyena::checkpoint::load_model(&run).unwrap();
    let mut m = loaded
        .downcast::<hyena::models::Model<hyena::models::hyenadna::HyenaLm>>("test")
        .unwrap()
        .clone();
    let w_out = m.net.blocks[1].mixer.filter.linears().last().unwrap().0;
    w_out.of_mut(m.params.data_mut())[3] = f32::NAN;
    hyena::checkpoint::save_model(&nan, &m).unwrap();
    let before = snapshot(&dir);
    let x = dir.join("x");
    fails_with(
        &hyena(&[
            "distill",
            "--model",
            nan.to_str().unwrap(),
            "--order",
            "2",
            "--out",
            x.to_str().unwrap(),
        ]),
        &["layers.1.", "finite"],
    );
    fails_with(
        &hyena(&[
            "distill",
            "--model",
            nolong.to_str().unwrap(),
            "--order",
            "2",
            "--out",
            x.to_str().unwrap(),
        ]),
        &["n_layer"],
    );
    assert_eq!(snapshot(&dir), before);
    assert!(!other.join("model.safetensors").exists());

    // The generation benchmark: one record per context and the plot.
    let png = dir.join("gen.png");
    let out = ok(&hyena(&[
        "bench",
        "generate",
        "--contexts",
        "64,256",
        "--dim",
        "16",
        "--modes",
        "2",
        "--json",
        "--png",
        png.to_str().unwrap(),
    ]));
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1]["context"], 256);
    assert!(recs
        .iter()
        .all(|r| r["recurrent_ms_per_token"].as_f64().unwrap() > 0.0));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}
