"""Issue 27, item 5: joining a token-authenticated cluster without its token (or with another
one) is one line, exit 2, before anything is written; it was 20 s of ``InvalidAuthToken``
warnings and a ~50-line traceback. The cluster is this process's own embedded Ray, which
always runs with token authentication (``maxup.platform.distributed.start_local_ray``)."""

from __future__ import annotations

import pytest
from test_reliability import SPACE, fresh_home  # noqa: F401 - the fixture

from maxup.cli import main
from maxup.errors import UsageError


@pytest.mark.ray
def test_regression_joining_a_token_cluster_without_its_token_is_one_line(
        fresh_home, tmp_path, monkeypatch, capsys):  # noqa: F811 - the fixture
    import ray
    from ray._raylet import AuthenticationTokenLoader

    from maxup.platform.distributed import probe_cluster, start_local_ray

    start_local_ray()
    address = ray.get_runtime_context().gcs_address
    token = (fresh_home / ".ray" / "auth_token").read_text().strip()
    # Another user's shell: no token anywhere.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("HOME", str(other))
    AuthenticationTokenLoader.instance().reset_cache()
    with pytest.raises(UsageError, match="uses token authentication and no token is set "
                                         "here") as exc:
        probe_cluster(address)
    assert "RAY_AUTH_TOKEN_PATH" in str(exc.value) and "\n" not in str(exc.value)

    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    assert main(["sweep", str(space), "--address", address, "--storage", str(storage)]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"maxup: error: --address {address!r}: the cluster at {address} uses "
                          "token authentication and no token is set here"), err
    assert not storage.exists()

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(UsageError, match="refused the token set here"):
        probe_cluster(address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    assert probe_cluster(address) == address
