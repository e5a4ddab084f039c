"""Autoregressive mode of the shared trunk: shifted next-token loss and recurrent decoding."""
from diffmamba.ar.decode import ar_generate
from diffmamba.ar.loss import ar_loss, ar_nll, shifted_nll
