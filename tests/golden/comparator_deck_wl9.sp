.title cimcosim sense-amplifier bench
.include <NMOS_VTG.inc>
.include <PMOS_VTG.inc>
.subckt cim_sa vdd pre saen bl ref out outb dvt_p1=0 mu_p1=1 dvt_p2=0 mu_p2=1 dvt_n1=0 mu_n1=1 dvt_n2=0 mu_n2=1 dvt_n3=0 mu_n3=1 dvt_n4=0 mu_n4=1
Mp1 out outb vdd vdd PMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_p1} mulu0={mu_p1}
Mp2 outb out vdd vdd PMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_p2} mulu0={mu_p2}
Mn1 out outb x1 0 NMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_n1} mulu0={mu_n1}
Mn2 outb out x2 0 NMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_n2} mulu0={mu_n2}
Mn3 x1 saen bl 0 NMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_n3} mulu0={mu_n3}
Mn4 x2 saen ref 0 NMOS_VTG W=4.5e-07 L=5e-08 delvto={dvt_n4} mulu0={mu_n4}
Mp3 out pre vdd vdd PMOS_VTG W=4e-07 L=5e-08
Mp4 outb pre vdd vdd PMOS_VTG W=4e-07 L=5e-08
.ends cim_sa

.subckt cim_column bl rcol=1e6
Rwire bl cells 200
Rcells cells 0 {rcol}
.ends cim_column
Vdd vdd 0 1
Vpre pre 0 PULSE(0 1 2e-10 2e-11 2e-11 1 2)
Vsaen saen 0 PULSE(0 1 2e-10 2e-11 2e-11 1 2)
Xsa0 vdd pre saen bl_0 ref_0 out_0 outb_0 cim_sa dvt_n1=0 dvt_n2=0 dvt_n3=0 dvt_n4=0 dvt_p1=0 dvt_p2=0 mu_n1=1 mu_n2=1 mu_n3=1 mu_n4=1 mu_p1=1 mu_p2=1
Xbl0 bl_0 cim_column rcol=17241.3793103
Xrf0 ref_0 cim_column rcol=18691.588785
Xsa1 vdd pre saen bl_1 ref_1 out_1 outb_1 cim_sa dvt_n1=0.003 dvt_n2=0 dvt_n3=-0.004 dvt_n4=0.005 dvt_p1=0.01 dvt_p2=-0.02 mu_n1=0.99 mu_n2=1 mu_n3=1.02 mu_n4=0.98 mu_p1=1.01 mu_p2=1
Xbl1 bl_1 cim_column rcol=10389.6103896
Xrf1 ref_1 cim_column rcol=10152.284264
.options noacct num_threads=1 
.save out_0 outb_0 out_1 outb_1
.tran 5e-12 5.2e-10 0 5e-12 uic
.end
