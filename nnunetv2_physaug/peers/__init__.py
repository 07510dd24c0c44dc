"""Generic intensity augmentations that PhysAug is compared with and combined with (GIN-IPA, location-scale),
written from their papers; their nnU-Net trainers are in :mod:`nnunetv2_physaug.nnunet.peer_trainers`."""
