"""Robust evaluation: attacks and the accuracies they leave.

Modules, in dependency order:
  attacks     PGD (L∞ / L2; CE, CW-margin, DLR or targeted loss; restarts) on cleverhans' step
  apgd        APGD (CE, DLR) as one compiled TensorFlow loop
  square      the Square attack (L∞) as one compiled TensorFlow loop
  autoattack  ART's AutoAttack, APGD and Square on any model callable; the TF loops' configurations
  ensembles   the named attacks (protocol, strong, autoattack) and the worst case per example
  sanity      the sanity report: unconverged attacks, black-box gaps, gradient masking
  evaluation  benign and robust accuracy, saved adversarial sets, transfer, linearized output terms
"""
