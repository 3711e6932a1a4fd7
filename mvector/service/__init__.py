"""The HTTP verification service (``mvector serve``) over the inference layer."""
