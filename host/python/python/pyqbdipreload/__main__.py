from pyqbdipreload import run

run()
