"""The plain PyTorch model under hope_reset_at_eod (config.json; issue 16 item 3): packed documents are independent,
and streaming the packed stream in any cuts gives the whole forward's losses (the per-row states are exact)."""

from __future__ import annotations

import pytest
import torch

from hope_megatron.inference import HopeLM
from tests.unit.eval.helpers import tiny_config, tiny_model

EOD = 256


def _model(variant, reset=True):
    base = tiny_model(variant, layers=2, chunk=4)
    model = HopeLM(dict(tiny_config(variant, layers=2, chunk=4), hope_reset_at_eod=reset, eod_token_id=EOD))
    model.load_state_dict(base.state_dict())
    return model.eval()


@pytest.mark.parametrize("variant", ["hope", "titans"])
def test_packed_documents_are_independent_and_streaming_is_exact(variant):
    g = torch.Generator().manual_seed(1)
    doc1 = torch.cat([torch.randint(0, 256, (2, 9), generator=g), torch.full((2, 1), EOD)], dim=1)
    doc2 = torch.randint(0, 256, (2, 21), generator=g)
    packed = torch.cat([doc1, doc2], dim=1)
    packed[1, 4] = EOD  # row 1 holds a third boundary: rows stream at different document positions
    model = _model(variant)
    with torch.no_grad():
        both = model(packed)
        alone = model(doc2)
        assert (both[0, 10:] - alone[0]).abs().max() < 1e-5
        assert (_model(variant, reset=False)(packed)[0, 10:] - alone[0]).abs().max() > 1e-3  # without: doc1 leaks
        whole = model.token_nll(packed, segment=packed.shape[1])
        for segment in (3, 10, 11):  # cuts inside documents, right after an EOD, right at a start
            assert (model.token_nll(packed, segment=segment) - whole).abs().max() < 1e-5, segment


def test_reset_without_eod_id_is_one_sentence():
    with pytest.raises(ValueError, match="sets hope_reset_at_eod but no eod_token_id"):
        HopeLM(dict(tiny_config("hope"), hope_reset_at_eod=True))
