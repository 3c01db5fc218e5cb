python $1/code/descriptors.py $2 $3
