"""Each pruning method's recipe as its authors run it, one module per method, every value cited
(trainables/recipes.py has the format). The method's class carries it as `recipe`."""
