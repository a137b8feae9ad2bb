from conftest import sha256, allocated_bytes, drop_caches


def test_release_then_cat_returns_the_original_bytes(hsm):
    p, digest = hsm.write("a.bin", size=5_000_000)
    hsm.migrate(p)
    assert allocated_bytes(p) < 64 * 1024
    drop_caches()
    assert sha256(p) == digest
    assert hsm.state(p) == "archived"
