"""Compute basic RDKit molecular descriptors for a list of SMILES.

Usage: python descriptors.py INPUT_CSV OUTPUT_CSV

The input CSV has a header row and one SMILES per row in the first column.
The output CSV has one row per input row, in the same order. Molecules that
cannot be parsed produce a row of empty fields.
"""

import csv
import sys

from rdkit import Chem, RDLogger
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

RDLogger.DisableLog("rdApp.*")

COLUMNS = [
    "mol_weight",
    "exact_mol_weight",
    "logp",
    "tpsa",
    "num_h_donors",
    "num_h_acceptors",
    "num_rotatable_bonds",
    "num_heavy_atoms",
]


def read_smiles(path):
    """Return the first column of every data row in the input CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        return [row[0].strip() if row else "" for row in reader]


def calculate(smiles):
    """Return the descriptor row for one SMILES, or empty fields if invalid."""
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return [""] * len(COLUMNS)
    return [
        float(Descriptors.MolWt(mol)),
        float(Descriptors.ExactMolWt(mol)),
        float(Crippen.MolLogP(mol)),
        float(rdMolDescriptors.CalcTPSA(mol)),
        int(Descriptors.NumHDonors(mol)),
        int(Descriptors.NumHAcceptors(mol)),
        int(Descriptors.NumRotatableBonds(mol)),
        int(mol.GetNumHeavyAtoms()),
    ]


def main():
    input_file, output_file = sys.argv[1], sys.argv[2]
    smiles_list = read_smiles(input_file)
    with open(output_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for smiles in smiles_list:
            writer.writerow(calculate(smiles))


if __name__ == "__main__":
    main()
