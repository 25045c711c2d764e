def test_demo_fixture_is_a_real_badnet(demo_bundle):
    metrics = demo_bundle.info["metrics"]
    assert metrics["badnet"]["attack_success_rate"] > 0.8
    assert metrics["clean_model"]["attack_success_rate"] < 0.2
