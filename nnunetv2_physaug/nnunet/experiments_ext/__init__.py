# `physaug-env --experiments` adds this folder to `nnUNet_extTrainer` (see nnunetv2_physaug.nnunet.env). nnU-Net
# imports every module in it as a top-level module, so it holds only the small shim module below; the real
# trainers live in nnunetv2_physaug.nnunet.experiments so that they pickle into data-loader workers.
