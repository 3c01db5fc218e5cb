"""ESOL aqueous solubility model (Delaney, 2004) with a load-once interface.

The coefficients of the published ESOL equation are read from
``model/checkpoints/esol_coefficients.json`` when ``load()`` is called:

    logS = intercept + logp * clogP + mw * MW
           + rotatable_bonds * RB + aromatic_proportion * AP

where clogP is the Crippen logP, MW the molecular weight, RB the number of
rotatable bonds and AP the fraction of heavy atoms that are aromatic.
"""

import json
from pathlib import Path

from rdkit import Chem, RDLogger
from rdkit.Chem import Crippen, Descriptors

RDLogger.DisableLog("rdApp.*")

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
COEFFICIENTS_FILE = "esol_coefficients.json"


def solubility_class(logs):
    """Map a log solubility (mol/L) to a coarse solubility class."""
    if logs >= 0:
        return "highly soluble"
    if logs >= -2:
        return "soluble"
    if logs >= -4:
        return "moderately soluble"
    return "poorly soluble"


class EsolModel:
    """Estimate aqueous solubility (logS, mol/L) from SMILES with ESOL."""

    def __init__(self):
        self.coefficients = None

    def load(self):
        """Read the ESOL coefficients from the checkpoints folder."""
        with open(CHECKPOINTS_DIR / COEFFICIENTS_FILE) as f:
            self.coefficients = json.load(f)

    def _logs(self, mol):
        c = self.coefficients
        heavy_atoms = mol.GetNumHeavyAtoms()
        aromatic_atoms = sum(1 for atom in mol.GetAtoms() if atom.GetIsAromatic())
        aromatic_proportion = aromatic_atoms / heavy_atoms if heavy_atoms else 0.0
        return (
            c["intercept"]
            + c["logp"] * Crippen.MolLogP(mol)
            + c["mw"] * Descriptors.MolWt(mol)
            + c["rotatable_bonds"] * Descriptors.NumRotatableBonds(mol)
            + c["aromatic_proportion"] * aromatic_proportion
        )

    def predict(self, inputs: list) -> list:
        """Return one result per SMILES, in order; None for invalid SMILES."""
        if self.coefficients is None:
            self.load()
        results = []
        for smiles in inputs:
            mol = Chem.MolFromSmiles(smiles) if smiles else None
            if mol is None:
                results.append(None)
                continue
            logs = float(self._logs(mol))
            results.append({"logs": logs, "solubility_class": solubility_class(logs)})
        return results
