# Install the RDKit version the model was built and tested with
pip install rdkit==2026.9.1
