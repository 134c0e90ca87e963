"""DeepIoT compression: the compressor-critic loop (DESIGN §2) and its phases compress → finetune."""
